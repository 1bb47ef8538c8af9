// custody-test-device: one swtpm-backed device (tests/support/test_device.h) driven from a shell
// test, for the device-side half of the admin workflow. The software TPM lives only as long as
// this process, so one run does the whole device story: enroll with a one-time token, attest
// (collecting leases), optionally use a model and report it, optionally ask for budget
// extensions. It prints one JSON object:
//   {"device_id", "leases": [model ids], "usage": answer|null, "extensions": [answers]}
// Test-only: never installed.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <vector>

#include "core/base/file.h"
#include "tests/support/test_device.h"

namespace {

using custody::Result;
using custody::Status;

struct Args {
  uint16_t port = 0;
  std::string ca;
  std::string token_file;
  std::string model;
  uint64_t use = 0;
  uint64_t counter_unit = 1;
  std::string licence;
  std::vector<uint64_t> extend;
};

Result<nlohmann::json> Run(const Args& a) {
  CUSTODY_ASSIGN_OR_RETURN(custody::Bytes ca, custody::ReadFile(a.ca, 1 << 20));
  CUSTODY_ASSIGN_OR_RETURN(custody::Bytes token_bytes, custody::ReadFile(a.token_file, 4096));
  std::string token(custody::AsChars(token_bytes));
  while (!token.empty() && (token.back() == '\n' || token.back() == ' ')) token.pop_back();
  CUSTODY_ASSIGN_OR_RETURN(
      auto device, custody::testing::TestDevice::Create(a.port, std::string(custody::AsChars(ca))));
  CUSTODY_RETURN_IF_ERROR(device->Enroll(token, a.counter_unit));
  nlohmann::json out;
  out["device_id"] = device->identity().device_id;
  CUSTODY_ASSIGN_OR_RETURN(auto leases, device->Attest());
  out["leases"] = nlohmann::json::array();
  for (const auto& l : leases) out["leases"].push_back(l.model_id);
  out["usage"] = nullptr;
  if (a.use > 0) {
    CUSTODY_ASSIGN_OR_RETURN(out["usage"], device->UseAndReport(a.model, a.use, "report-1"));
  }
  out["extensions"] = nlohmann::json::array();
  for (uint64_t n : a.extend) {
    CUSTODY_ASSIGN_OR_RETURN(nlohmann::json e, device->RequestExtension(a.licence, n));
    out["extensions"].push_back(e);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"custody-test-device: a swtpm-backed test device (enroll, attest, use, extend)"};
  Args a;
  app.add_option("--port", a.port, "Custodian port on 127.0.0.1")->required();
  app.add_option("--ca", a.ca, "Custodian CA certificate (DATA/keys/ca.pem)")->required();
  app.add_option("--enrollment-token-file", a.token_file, "One-time enrollment token")->required();
  app.add_option("--model", a.model, "Model id to report usage for");
  app.add_option("--use", a.use, "Inferences to count on the TPM and report");
  app.add_option("--counter-unit", a.counter_unit,
                 "Requests per TPM counter increment, chosen at enrollment (default 1)");
  app.add_option("--licence", a.licence, "Licence id for extension requests");
  app.add_option("--extend", a.extend, "Request an extension of N (repeatable)");
  CLI11_PARSE(app, argc, argv);
  if ((a.use > 0 && a.model.empty()) || (!a.extend.empty() && a.licence.empty())) {
    std::fprintf(stderr, "custody-test-device: --use needs --model; --extend needs --licence\n");
    return 2;
  }
  Result<nlohmann::json> out = Run(a);
  if (!out) {
    std::fprintf(stderr, "custody-test-device: error: %s\n", out.error().ToString().c_str());
    return 1;
  }
  std::printf("%s\n", out->dump().c_str());
  return 0;
}
