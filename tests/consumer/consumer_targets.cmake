# The consumer's own programs, the same whichever way it got kvc: one links kvc::kvc, one
# kvc::verbs, and the first is the consumer's only test.
add_executable(consumer ${CMAKE_CURRENT_LIST_DIR}/consumer_main.cpp)
target_link_libraries(consumer PRIVATE kvc::kvc)
add_executable(verbs_consumer ${CMAKE_CURRENT_LIST_DIR}/verbs_main.cpp)
target_link_libraries(verbs_consumer PRIVATE kvc::verbs)
add_test(NAME consumer_runs COMMAND consumer)
