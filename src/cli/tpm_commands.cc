// custody tpm info: what an operator needs to know about a device's TPM before enrolling it —
// can Custody reach it, who made it, does it carry EK certificates, what are its PCRs and clock.
// Read-only: it creates no key and changes nothing (the EKs it derives are flushed).
#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/cli_common.h"
#include "core/base/bytes.h"
#include "core/tpm/device.h"
#include "core/tpm/ek_cert.h"
#include "core/tpm/objects.h"

namespace custody::cli {
namespace {

struct TpmInfoArgs {
  std::string tcti = std::string(tpm::kDefaultTcti);
  std::string pcrs = "0,2,4,7";
  bool json = false;
};

nlohmann::json EkJson(tpm::Tpm& device, tpm::EkType type) {
  nlohmann::json out;
  Result<tpm::Endorsement> ek = device.ReadEndorsement(type);
  if (!ek) {
    out["error"] = ek.error().ToString();
    return out;
  }
  Result<TPMT_PUBLIC> pub = tpm::UnmarshalPublic2B(ek->public_area);
  Result<Bytes> name = pub ? tpm::ObjectName(*pub) : pub.error();
  out["name"] = name ? HexEncode(*name) : name.error().ToString();
  if (!ek->certificate) {
    out["certificate"] = nullptr;
    return out;
  }
  Result<tpm::EkCertificateSummary> cert = tpm::DescribeEkCertificate(*ek->certificate);
  if (!cert) {
    out["certificate"] = {{"error", cert.error().ToString()}};
  } else {
    out["certificate"] = {{"issuer", cert->issuer},
                          {"subject", cert->subject},
                          {"not_after", cert->not_after},
                          {"bytes", ek->certificate->size()}};
  }
  return out;
}

Result<nlohmann::json> Describe(const TpmInfoArgs& a) {
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrSelection selection, tpm::PcrSelection::Parse(a.pcrs));
  CUSTODY_ASSIGN_OR_RETURN(std::unique_ptr<tpm::Tpm> device, tpm::Tpm::Open(a.tcti));
  CUSTODY_ASSIGN_OR_RETURN(tpm::TpmProperties props, device->Describe());
  CUSTODY_ASSIGN_OR_RETURN(tpm::TimeInfo clock, device->ReadClock());
  CUSTODY_ASSIGN_OR_RETURN(tpm::PcrValues pcrs, device->ReadPcrs(selection));
  nlohmann::json out;
  out["tcti"] = a.tcti;
  out["manufacturer"] = props.manufacturer;
  out["vendor"] = props.vendor;
  // Makers encode their firmware version differently (some a date, some major.minor halves):
  // show the two 32-bit properties as they are.
  char firmware[32];
  std::snprintf(firmware, sizeof(firmware), "%08x.%08x",
                static_cast<unsigned>(props.firmware_version >> 32),
                static_cast<unsigned>(props.firmware_version & 0xffffffffu));
  out["firmware"] = firmware;
  out["spec_revision"] = props.spec_revision;
  out["ek"] = {{"ecc_p256", EkJson(*device, tpm::EkType::kEcc)},
               {"rsa_2048", EkJson(*device, tpm::EkType::kRsa)}};
  out["clock"] = {{"clock_ms", clock.clock_ms},
                  {"reset_count", clock.reset_count},
                  {"restart_count", clock.restart_count},
                  {"safe", clock.safe}};
  nlohmann::json pcr_json = nlohmann::json::object();
  for (const auto& [index, value] : pcrs) pcr_json[std::to_string(index)] = HexEncode(value);
  out["pcrs_sha256"] = pcr_json;
  return out;
}

void PrintEk(const char* label, const nlohmann::json& ek) {
  if (ek.contains("error")) {
    std::printf("%-13s unavailable: %s\n", label, ek["error"].get<std::string>().c_str());
    return;
  }
  std::printf("%-13s name %s\n", label, ek["name"].get<std::string>().c_str());
  const nlohmann::json& cert = ek["certificate"];
  if (cert.is_null()) {
    std::printf("%-13s no certificate stored by the TPM maker\n", "");
  } else if (cert.contains("error")) {
    std::printf("%-13s certificate unreadable: %s\n", "", cert["error"].get<std::string>().c_str());
  } else {
    std::printf("%-13s certificate issued by %s, valid until %s\n", "",
                cert["issuer"].get<std::string>().c_str(),
                cert["not_after"].get<std::string>().c_str());
  }
}

Status TpmInfo(const TpmInfoArgs& a) {
  CUSTODY_ASSIGN_OR_RETURN(nlohmann::json info, Describe(a));
  if (a.json) {
    std::printf("%s\n", info.dump(2).c_str());
    return OkStatus();
  }
  std::printf("TPM:          %s via %s\n", info["manufacturer"].get<std::string>().c_str(),
              a.tcti.c_str());
  std::printf("vendor:       %s, firmware %s, TPM 2.0 library revision %.2f\n",
              info["vendor"].get<std::string>().c_str(),
              info["firmware"].get<std::string>().c_str(),
              info["spec_revision"].get<uint32_t>() / 100.0);
  PrintEk("EK (ECC):", info["ek"]["ecc_p256"]);
  PrintEk("EK (RSA):", info["ek"]["rsa_2048"]);
  const nlohmann::json& clock = info["clock"];
  std::printf("clock:        %llu ms, %u resets, %s\n",
              static_cast<unsigned long long>(clock["clock_ms"].get<uint64_t>()),
              clock["reset_count"].get<uint32_t>(),
              clock["safe"].get<bool>() ? "safe" : "NOT safe (the TPM lost time at a power cut)");
  for (const auto& [index, value] : info["pcrs_sha256"].items()) {
    std::printf("PCR %-2s        %s\n", index.c_str(), value.get<std::string>().c_str());
  }
  return OkStatus();
}

}  // namespace

void RegisterTpmCommands(CLI::App& app, int& exit_code) {
  CLI::App* tpm_group = app.add_subcommand("tpm", "Inspect this device's TPM (read-only)");
  tpm_group->require_subcommand(1);
  auto a = std::make_shared<TpmInfoArgs>();
  CLI::App* info = tpm_group->add_subcommand(
      "info", "Show the TPM's maker, EKs and their certificates, clock and PCRs");
  info->add_option("--tcti", a->tcti,
                   "How to reach the TPM: device:/dev/tpmrm0 (default) or swtpm:path=SOCKET");
  info->add_option("--pcrs", a->pcrs, "PCRs of the SHA-256 bank to show (default 0,2,4,7)");
  info->add_flag("--json", a->json, "Machine-readable output");
  info->callback([a, &exit_code] {
    Status s = TpmInfo(*a);
    exit_code = s.ok() ? kExitOk : Fail(s);
  });
}

}  // namespace custody::cli
