# The CPU emulation of the CUDA subset glam uses (tests/cuda_emu: include/ holds
# the emulated cuda_runtime.h, cuda_bf16.h and cublas_v2.h, emu.cpp the runtime,
# its fiber scheduler and cuBLAS). Needs no nvcc and no GPU; needs Boost.Context
# (libboost-context-dev) for the fibers that run each block's threads.
#
#   glam_add_cuda_emu_library(<target> [SANITIZE] <sources...>)
#
# builds a static library from .cu files (compiled as C++ by the C++ compiler,
# through a generated one-line .cpp that includes the .cu, so the same .cu can
# also be in an nvcc target of any directory) and any .cpp files, against the
# emulated headers, with GLAM_CUDA_EMU=1 defined for it and its users. SANITIZE
# builds it, the runtime it links and everything linking it with
# -fsanitize=address,undefined. Link glam_model (or another CPU library) for the
# glam code the sources call.
set(GLAM_CUDA_EMU_DIR ${CMAKE_CURRENT_LIST_DIR})
find_package(Boost REQUIRED COMPONENTS context)
set(GLAM_SANITIZE_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)

foreach(variant "" "_asan")
  set(rt glam_cuda_emu_runtime${variant})
  if(NOT TARGET ${rt})
    add_library(${rt} STATIC ${GLAM_CUDA_EMU_DIR}/emu.cpp)
    target_include_directories(${rt} BEFORE PUBLIC ${GLAM_CUDA_EMU_DIR}/include)
    target_compile_definitions(${rt} PUBLIC GLAM_CUDA_EMU=1)
    target_compile_options(${rt} PRIVATE ${GLAM_WARNINGS})
    target_link_libraries(${rt} PUBLIC Threads::Threads PRIVATE Boost::context)
    if(variant STREQUAL "_asan")
      target_compile_options(${rt} PUBLIC ${GLAM_SANITIZE_FLAGS})
      target_link_options(${rt} PUBLIC ${GLAM_SANITIZE_FLAGS})
    endif()
  endif()
endforeach()

function(glam_add_cuda_emu_library target)
  cmake_parse_arguments(ARG "SANITIZE" "" "" ${ARGN})
  set(files "")
  foreach(src ${ARG_UNPARSED_ARGUMENTS})
    get_filename_component(abs ${src} ABSOLUTE)
    if(abs MATCHES "\\.cu$")
      get_filename_component(stem ${abs} NAME)
      set(wrapper ${CMAKE_CURRENT_BINARY_DIR}/${target}.cu/${stem}.cpp)
      file(CONFIGURE OUTPUT ${wrapper} CONTENT "// Generated: ${abs} as C++ (CUDA emulation).\n#include \"${abs}\"\n")
      list(APPEND files ${wrapper})
    else()
      list(APPEND files ${abs})
    endif()
  endforeach()
  add_library(${target} STATIC ${files})
  target_compile_options(${target} PRIVATE ${GLAM_WARNINGS})
  if(ARG_SANITIZE)
    target_link_libraries(${target} PUBLIC glam_cuda_emu_runtime_asan)
  else()
    target_link_libraries(${target} PUBLIC glam_cuda_emu_runtime)
  endif()
endfunction()
