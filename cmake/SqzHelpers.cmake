# Shared build helpers.

# Warnings for our own targets (not for generated code).
function(sqz_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter -Wno-sign-compare>)
endfunction()

# sqz_add_library(name [STATIC] SOURCES ... DEPS ...): a module library rooted at the repository.
function(sqz_add_library name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(${name} PUBLIC ${A_DEPS} PRIVATE ${A_PRIVATE_DEPS})
  sqz_warnings(${name})
endfunction()

# sqz_add_test(name SOURCES ... DEPS ... [LABELS ...] [TIMEOUT s]): one Catch2 binary, one CTest
# test. Tests see SQZ_SHARED_DIR (shared models/tokenizers) and SQZ_BINARY_DIR (built tools).
function(sqz_add_test name)
  if(NOT SQZ_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_DEPS} Catch2::Catch2WithMain)
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${name} PRIVATE
    SQZ_SHARED_DIR="${SQZ_SHARED_DIR}" SQZ_SOURCE_DIR="${PROJECT_SOURCE_DIR}"
    SQZ_BINARY_DIR="${PROJECT_BINARY_DIR}")
  sqz_warnings(${name})
  add_test(NAME ${name} COMMAND ${name})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 300)
  endif()
  set_tests_properties(${name} PROPERTIES TIMEOUT ${A_TIMEOUT} LABELS "${A_LABELS}")
endfunction()
