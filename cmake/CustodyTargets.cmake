# Helpers for Custody's own targets.
include(GNUInstallDirs)

# Shared libraries go to <build>/lib, as they go to <prefix>/<libdir> when installed, so the
# built-in engine modules sit at the same place relative to libcustody-engine in both
# (<dir>/custody/engines, see src/engine/builtin_module.h).
set(CUSTODY_LIBRARY_DIR "${PROJECT_BINARY_DIR}/lib")
set(CUSTODY_ENGINE_MODULE_DIR "${CUSTODY_LIBRARY_DIR}/custody/engines")

# Installed programs find the libraries relative to themselves.
set(CMAKE_INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")

# The identity a built-in engine module must share with libcustody-engine: C++ types cross that
# boundary, so only the same build may meet there.
set(CUSTODY_BUILD_ID
    "custody-${PROJECT_VERSION}/${CMAKE_CXX_COMPILER_ID}-${CMAKE_CXX_COMPILER_VERSION}/${CMAKE_BUILD_TYPE}")

# custody_shared_library(TARGET OUTPUT_NAME): one of Custody's shared libraries (libcustody-core,
# libcustody-engine): placed in <build>/lib and installed to <libdir>.
function(custody_shared_library target output_name)
  set_target_properties(${target} PROPERTIES
    OUTPUT_NAME "${output_name}"
    LIBRARY_OUTPUT_DIRECTORY "${CUSTODY_LIBRARY_DIR}"
    INSTALL_RPATH "$ORIGIN")
  install(TARGETS ${target} LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endfunction()

# custody_link_engine(TARGET): TARGET loads models, so it links custody::engine and needs the
# built-in engine modules built next to it.
function(custody_link_engine target)
  target_link_libraries(${target} PRIVATE custody::engine)
  if(TARGET custody_engine_modules)
    add_dependencies(${target} custody_engine_modules)
  endif()
endfunction()
