# The whole CUDA backend (every src/layers/cuda/*.cu: kernels, glue, decode, routing) on
# the CPU emulation, linked with glam_model, runs tests/cuda's whole-model and
# mesh tests in CI: cuda_emu_model, cuda_emu_mesh_<D>x<M> (the mesh test under mpirun).
foreach(name test_cuda_model test_cuda_mesh)
  add_executable(${name}_emu ${PROJECT_SOURCE_DIR}/tests/cuda/${name}.cpp)
  # glam_model calls the backend's entry points and the backend calls glam_model
  target_link_libraries(${name}_emu PRIVATE "$<LINK_GROUP:RESCAN,glam_model,glam_cuda_layers_emu>" Catch2::Catch2)
  target_compile_options(${name}_emu PRIVATE ${GLAM_WARNINGS})
endforeach()
add_test(NAME cuda_emu_model COMMAND test_cuda_model_emu)
set_tests_properties(cuda_emu_model PROPERTIES TIMEOUT 900 LABELS cuda_emu
  ENVIRONMENT "GLAM_TEST_STEPS=4;OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
# The meshes of tests/mpi's CPU equivalence test that the 2-core CI machine runs in
# seconds (tests/cuda/test_cuda_mesh.cpp says what is compared, and how closely).
foreach(shape 2x1 1x2 2x2 1x3)
  string(REPLACE "x" ";" dm ${shape})
  list(GET dm 0 d)
  list(GET dm 1 m)
  math(EXPR np "${d} * ${m}")
  add_test(NAME cuda_emu_mesh_${shape}
           COMMAND ${MPIEXEC_EXECUTABLE} --allow-run-as-root --oversubscribe ${MPIEXEC_NUMPROC_FLAG} ${np}
                   -x GLAM_TEST_MESH -x OMP_NUM_THREADS -x OPENBLAS_NUM_THREADS $<TARGET_FILE:test_cuda_mesh_emu>)
  set_tests_properties(cuda_emu_mesh_${shape} PROPERTIES TIMEOUT 900 PROCESSORS ${np} LABELS cuda_emu
    ENVIRONMENT "GLAM_TEST_MESH=${shape};OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1")
endforeach()
