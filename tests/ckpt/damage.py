#!/usr/bin/env python3
"""Damages a copy of an HDF5 file for the failure tests.

usage: damage.py IN OUT flip DATASET   flips 4 bytes in the middle of DATASET's raw data
                                         (contiguous storage: offset from H5Dget_offset)
       damage.py IN OUT truncate FRACTION  keeps the first FRACTION of the file"""
import shutil
import sys

import h5py


def main():
    src, out, mode, arg = sys.argv[1:5]
    if mode == "flip":
        with h5py.File(src, "r") as f:
            ds = f[arg]
            offset = ds.id.get_offset()
            if offset is None:
                sys.exit(f"damage.py: {arg} has no contiguous storage")
            where = offset + (ds.size * ds.dtype.itemsize // 2) // 4 * 4
        shutil.copyfile(src, out)
        with open(out, "r+b") as fh:
            fh.seek(where)
            raw = bytearray(fh.read(4))
            fh.seek(where)
            fh.write(bytes(b ^ 0x5A for b in raw))
        print(f"flipped 4 bytes of {arg} at file offset {where}")
    elif mode == "truncate":
        with open(src, "rb") as fh:
            data = fh.read()
        keep = int(len(data) * float(arg))
        with open(out, "wb") as fh:
            fh.write(data[:keep])
        print(f"kept {keep} of {len(data)} bytes")
    else:
        sys.exit(f"damage.py: unknown mode {mode}")


if __name__ == "__main__":
    main()
