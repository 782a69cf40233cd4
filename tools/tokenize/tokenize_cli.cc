#include "tools/tokenize/tokenize_cli.h"

#include <charconv>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/tokenizer/tokenizer.h"

namespace sqz {
namespace {

constexpr const char* kUsage =
    "usage: sqz-tokenize --model DIR [--no-bos] [--no-special] TEXT|-\n"
    "       sqz-tokenize --model DIR --decode [--skip-special] IDS|-\n";

// "1 2,3" or "[1, 2, 3]" -> ids.
StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    const char c = text[pos];
    if (c == ' ' || c == ',' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']') {
      ++pos;
      continue;
    }
    int32_t id = 0;
    const auto [end, ec] = std::from_chars(text.data() + pos, text.data() + text.size(), id);
    if (ec != std::errc() || end == text.data() + pos) {
      return InvalidArgumentError("not a token id at offset " + std::to_string(pos) + ": '" +
                                  text.substr(pos, 16) + "'");
    }
    ids.push_back(id);
    pos = static_cast<size_t>(end - text.data());
  }
  return ids;
}

std::string Dump(const nlohmann::json& j) {
  // Pieces or text may hold partial UTF-8 characters: show them as U+FFFD rather than throw.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

int RunTokenizeCli(int argc, const char* const* argv, std::istream& in, std::ostream& out,
                   std::ostream& err) {
  std::string model_dir, input;
  bool decode = false, add_bos = true, parse_special = true, skip_special = false;
  bool have_input = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--model" && i + 1 < argc) {
      model_dir = argv[++i];
    } else if (arg == "--decode") {
      decode = true;
    } else if (arg == "--no-bos") {
      add_bos = false;
    } else if (arg == "--no-special") {
      parse_special = false;
    } else if (arg == "--skip-special") {
      skip_special = true;
    } else if (arg == "-h" || arg == "--help") {
      out << kUsage;
      return 0;
    } else if ((arg.empty() || arg[0] != '-' || arg == "-") && !have_input) {
      input = arg;
      have_input = true;
    } else {
      err << "sqz-tokenize: unexpected argument '" << arg << "'\n" << kUsage;
      return 2;
    }
  }
  if (model_dir.empty() || !have_input) {
    err << "sqz-tokenize: --model DIR and one TEXT (or -) are required\n" << kUsage;
    return 2;
  }
  if (input == "-") input.assign(std::istreambuf_iterator<char>(in), {});

  auto tok = Tokenizer::FromHfDirectory(model_dir);
  if (!tok.ok()) {
    err << "sqz-tokenize: " << tok.status().ToString() << "\n";
    return 1;
  }
  if (decode) {
    auto ids = ParseIds(input);
    Status status = ids.ok() ? (*tok)->ValidateIds(*ids) : ids.status();
    if (!status.ok()) {
      err << "sqz-tokenize: " << status.ToString() << "\n";
      return 1;
    }
    out << Dump({{"text", (*tok)->Decode(*ids, skip_special)}}) << "\n";
    return 0;
  }
  const std::vector<int32_t> ids =
      (*tok)->Encode(input, add_bos && (*tok)->add_bos(), parse_special);
  nlohmann::json tokens = nlohmann::json::array();
  for (int32_t id : ids) tokens.push_back(std::string((*tok)->Piece(id)));
  out << Dump({{"ids", ids}, {"tokens", tokens}}) << "\n";
  return 0;
}

}  // namespace sqz
