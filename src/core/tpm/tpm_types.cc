#include "core/tpm/tpm_types.h"

#include <algorithm>
#include <charconv>

namespace custody::tpm {

Result<PcrSelection> PcrSelection::Of(std::vector<uint32_t> pcrs) {
  std::sort(pcrs.begin(), pcrs.end());
  for (size_t i = 0; i < pcrs.size(); ++i) {
    if (pcrs[i] >= kPcrCount) {
      return InvalidArgument("PCR " + std::to_string(pcrs[i]) + " does not exist (PCRs are 0.." +
                             std::to_string(kPcrCount - 1) + ")");
    }
    if (i > 0 && pcrs[i] == pcrs[i - 1]) {
      return InvalidArgument("PCR " + std::to_string(pcrs[i]) + " is selected twice");
    }
  }
  return PcrSelection{std::move(pcrs)};
}

Result<PcrSelection> PcrSelection::Parse(std::string_view text) {
  std::vector<uint32_t> pcrs;
  const std::string original(text);
  if (text.find_first_not_of(' ') == std::string_view::npos) {
    return InvalidArgument("no PCRs given: expected indices separated by commas, e.g. 0,2,4,7");
  }
  while (!text.empty()) {
    while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
    size_t comma = text.find(',');
    std::string_view item = text.substr(0, comma);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    uint32_t value = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), value);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) {
      return InvalidArgument("'" + original +
                             "' is not a PCR list: expected indices separated by commas, "
                             "e.g. 0,2,4,7");
    }
    pcrs.push_back(value);
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
    if (text.empty()) return InvalidArgument("'" + original + "' ends with a comma");
  }
  return Of(std::move(pcrs));
}

std::string PcrSelection::ToString() const {
  std::string out;
  for (uint32_t p : pcrs) out += (out.empty() ? "" : ",") + std::to_string(p);
  return out;
}

}  // namespace custody::tpm
