# The one libtorch: the one inside a PyTorch wheel, by default the project venv's
# (scripts/install-deps.sh), or another PyTorch's when HARNESS_PYTHON names its interpreter (a GPU
# machine's preinstalled torch). Sets TORCH_LIBRARIES and HX_WITH_CUDA.
#
# HARNESS_WITH_CUDA: AUTO (default) links libtorch's CUDA libraries when the CUDA toolkit is
# installed (what Caffe2's CMake config needs) and otherwise links its CPU libraries only; ON
# requires the toolkit; OFF links the CPU libraries only. The same wheel serves both: a CPU-only
# link runs CPU specs anywhere, a CUDA link also runs `device: cuda` specs on a GPU node.
set(HARNESS_PYTHON "${CMAKE_SOURCE_DIR}/.venv/bin/python" CACHE FILEPATH
    "Python whose torch package provides libtorch")
set(HARNESS_WITH_CUDA AUTO CACHE STRING "Link libtorch's CUDA libraries: AUTO, ON or OFF")
set_property(CACHE HARNESS_WITH_CUDA PROPERTY STRINGS AUTO ON OFF)

if(NOT EXISTS "${HARNESS_PYTHON}")
  message(FATAL_ERROR "No Python at HARNESS_PYTHON=${HARNESS_PYTHON}: run scripts/install-deps.sh "
                      "(makes .venv), or pass -DHARNESS_PYTHON=/path/to/python with torch installed")
endif()
execute_process(
  COMMAND "${HARNESS_PYTHON}" -c
          "import os, torch, torch.utils; print(torch.utils.cmake_prefix_path); print(os.path.dirname(torch.__file__)); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__)"
  OUTPUT_VARIABLE torch_facts OUTPUT_STRIP_TRAILING_WHITESPACE
  RESULT_VARIABLE torch_query ERROR_VARIABLE torch_query_error)
if(NOT torch_query EQUAL 0)
  message(FATAL_ERROR "${HARNESS_PYTHON} cannot import torch: ${torch_query_error}")
endif()
string(REPLACE "\n" ";" torch_facts "${torch_facts}")
list(GET torch_facts 0 HARNESS_TORCH_PREFIX)
list(GET torch_facts 1 torch_dir)
list(GET torch_facts 2 torch_cxx11_abi)
list(GET torch_facts 3 torch_version)
if(torch_version VERSION_LESS 2.5)
  message(FATAL_ERROR "torch ${torch_version} at ${HARNESS_PYTHON}: the harness needs PyTorch >= 2.5 "
                      "(scaled_dot_product_attention with grouped queries)")
endif()

if(HARNESS_WITH_CUDA STREQUAL "AUTO")
  find_package(CUDAToolkit QUIET)
  set(use_cuda ${CUDAToolkit_FOUND})
elseif(HARNESS_WITH_CUDA)
  set(use_cuda ON)
else()
  set(use_cuda OFF)
endif()

if(use_cuda)
  list(APPEND CMAKE_PREFIX_PATH "${HARNESS_TORCH_PREFIX}")
  # Caffe2's cuda.cmake probes the build machine's GPU for nvcc flags unless given a list; we
  # compile no CUDA sources, so any list will do and the build machine needs no GPU. CMake 3.25
  # does not know nvcc 13's C++20 flag: the (unused) CUDA language stays at C++17.
  if(NOT DEFINED TORCH_CUDA_ARCH_LIST AND NOT DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(TORCH_CUDA_ARCH_LIST "8.0;9.0")
  endif()
  set(CMAKE_CUDA_STANDARD 17)
  find_package(Torch REQUIRED)
  set(HX_WITH_CUDA 1)
else()
  # The wheel's CPU libraries, without Caffe2's CMake config (which insists on a CUDA toolkit for
  # a CUDA wheel). libtorch.so still loads the wheel's CUDA runtime at start-up through its own
  # RPATH, as `import torch` does on a machine without a GPU; nothing here calls it.
  add_library(harness_torch_cpu INTERFACE)
  target_include_directories(harness_torch_cpu SYSTEM INTERFACE
                             "${torch_dir}/include" "${torch_dir}/include/torch/csrc/api/include")
  target_compile_definitions(harness_torch_cpu INTERFACE _GLIBCXX_USE_CXX11_ABI=${torch_cxx11_abi})
  target_link_libraries(harness_torch_cpu INTERFACE "${torch_dir}/lib/libtorch.so"
                        "${torch_dir}/lib/libtorch_cpu.so" "${torch_dir}/lib/libc10.so")
  set(TORCH_LIBRARIES harness_torch_cpu)
  set(HX_WITH_CUDA 0)
  message(STATUS "libtorch ${torch_version} from ${torch_dir}, CPU libraries only "
                 "(HARNESS_WITH_CUDA=${HARNESS_WITH_CUDA}, CUDA toolkit found: ${CUDAToolkit_FOUND})")
endif()

# What our targets link. PyTorch's wheel is built with a newer GCC whose libstdc++ additions
# (std::filesystem, <chrono> time zones, stringbuf views) are linked statically into libtorch.so
# and exported; a binary that lists libtorch.so before libstdc++.so binds its own std::filesystem
# calls to those copies, and remove_all crashed there (a null call). libstdc++.so first in the
# binary's NEEDED list makes the dynamic linker find the system's own definitions first.
add_library(harness_libtorch INTERFACE)
target_link_options(harness_libtorch INTERFACE "LINKER:--push-state,--no-as-needed" "-lstdc++"
                    "LINKER:--pop-state")
target_link_libraries(harness_libtorch INTERFACE ${TORCH_LIBRARIES})
