# Corpus replay in the ordinary build (included from tests/CMakeLists.txt): each fuzz target's
# entry point linked with replay_main.cc and run over its committed corpus by ctest, so inputs
# that once crashed stay fixed without clang or libFuzzer.
set(CUSTODY_FUZZ_DIR ${PROJECT_SOURCE_DIR}/fuzz)

function(custody_fuzz_replay name source corpus)
  add_executable(${name} ${CUSTODY_FUZZ_DIR}/${source} ${CUSTODY_FUZZ_DIR}/replay_main.cc)
  target_include_directories(${name} PRIVATE ${CUSTODY_FUZZ_DIR})
  target_link_libraries(${name} PRIVATE custody::core custody::flags)
  add_test(NAME fuzz.${corpus}_corpus_replays_cleanly
    COMMAND ${name} ${CUSTODY_FUZZ_DIR}/corpus/${corpus})
  set_tests_properties(fuzz.${corpus}_corpus_replays_cleanly PROPERTIES LABELS fuzz TIMEOUT 120)
endfunction()

custody_fuzz_replay(custody_sealed_header_replay sealed_header_fuzzer.cc sealed)
custody_fuzz_replay(custody_tpm_verifier_replay tpm_verifier_fuzzer.cc tpm)
if(TARGET custody::engine)
  custody_fuzz_replay(custody_npy_replay npy_fuzzer.cc npy)
  target_link_libraries(custody_npy_replay PRIVATE custody::engine)
endif()
custody_fuzz_replay(custody_protocol_message_replay protocol_message_fuzzer.cc protocol)
custody_fuzz_replay(custody_envelope_replay envelope_fuzzer.cc envelope)
custody_fuzz_replay(custody_audit_replay audit_fuzzer.cc audit)
custody_fuzz_replay(custody_json_replay json_fuzzer.cc json)
custody_fuzz_replay(custody_journal_replay journal_fuzzer.cc journal)
target_link_libraries(custody_journal_replay PRIVATE custody::agent_journal)
custody_fuzz_replay(custody_kserve_replay kserve_fuzzer.cc kserve)
target_link_libraries(custody_kserve_replay PRIVATE custody::agent_kserve)
custody_fuzz_replay(custody_admin_request_replay admin_request_fuzzer.cc admin)
target_link_libraries(custody_admin_request_replay PRIVATE custody::custodian custody::http)
custody_fuzz_replay(custody_url_replay url_fuzzer.cc url)
target_link_libraries(custody_url_replay PRIVATE custody::http)
custody_fuzz_replay(custody_config_replay config_fuzzer.cc config)
target_link_libraries(custody_config_replay PRIVATE custody::custodian)
