# Script mode: install micache from MICACHE_BINARY_DIR into a scratch prefix,
# configure and build the consumer project against it with the same compiler
# flags (a sanitizer build needs its runtime in the consumer too), run it.
file(REMOVE_RECURSE "${SCRATCH_DIR}")
set(prefix "${SCRATCH_DIR}/prefix")

function(run_step)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE status)
  if(NOT status EQUAL 0)
    message(FATAL_ERROR "step failed (${status}): ${ARGN}")
  endif()
endfunction()

run_step("${CMAKE_COMMAND_PATH}" --install "${MICACHE_BINARY_DIR}" --prefix "${prefix}")
run_step("${CMAKE_COMMAND_PATH}" -S "${CONSUMER_SOURCE_DIR}" -B "${SCRATCH_DIR}/build"
         -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=Release
         "-DCMAKE_CXX_FLAGS=${CONSUMER_CXX_FLAGS}")
run_step("${CMAKE_COMMAND_PATH}" --build "${SCRATCH_DIR}/build")
run_step("${SCRATCH_DIR}/build/consumer")
