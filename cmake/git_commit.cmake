# Run at every build (cmake -P): writes OUT with the checkout's commit, and touches it only when the
# commit changed, so a rebuild without a new commit recompiles nothing. "-dirty" marks uncommitted
# changes in tracked files.
execute_process(COMMAND git describe --always --dirty --abbrev=12 --exclude=*
                WORKING_DIRECTORY "${SOURCE_DIR}" OUTPUT_VARIABLE commit
                OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
if(NOT commit)
  set(commit unknown)
endif()
file(WRITE "${OUT}.tmp"
     "// Generated at build time by cmake/git_commit.cmake.\n"
     "namespace hx::build {\nconst char* git_commit() { return \"${commit}\"; }\n}  // namespace hx::build\n")
execute_process(COMMAND ${CMAKE_COMMAND} -E copy_if_different "${OUT}.tmp" "${OUT}")
file(REMOVE "${OUT}.tmp")
