# One INTERFACE target carries every warning and hardening flag; every Custody target links it.
add_library(custody_flags INTERFACE)
add_library(custody::flags ALIAS custody_flags)

option(CUSTODY_WERROR "Treat warnings as errors" ON)

target_compile_options(custody_flags INTERFACE
  -Wall -Wextra -Wpedantic -Wshadow -Wnon-virtual-dtor -Wcast-align -Woverloaded-virtual
  -Wformat=2 -Wimplicit-fallthrough -Wno-missing-field-initializers
  -fstack-protector-strong -fPIC)
# GCC 12 at -O3 reports std::string concatenation inside libstdc++ as overlapping memcpy
# (-Wrestrict; GCC bugs 105329 and 105651, fixed in GCC 13). The warning stays on elsewhere.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(custody_flags INTERFACE -Wno-restrict)
endif()
if(CUSTODY_WERROR)
  target_compile_options(custody_flags INTERFACE -Werror)
endif()
# FORTIFY needs optimisation; Debug builds would warn about it.
target_compile_definitions(custody_flags INTERFACE
  $<$<NOT:$<CONFIG:Debug>>:_FORTIFY_SOURCE=2>)
target_link_options(custody_flags INTERFACE -Wl,-z,relro -Wl,-z,now -Wl,-z,noexecstack)
set(CMAKE_POSITION_INDEPENDENT_CODE ON)
