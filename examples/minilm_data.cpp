#include "minilm_data.hpp"

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "micache/error.hpp"
#include "micache/safetensors.hpp"

namespace micache::cli {

std::string data_dir(const std::string& override) {
  std::vector<std::string> candidates;
  if (!override.empty()) {
    candidates = {override};
  } else {
    if (const char* env = std::getenv("MICACHE_DATA_DIR")) candidates.emplace_back(env);
    candidates.emplace_back(MICACHE_SOURCE_DATA_DIR);
    candidates.emplace_back("tests/data");
  }
  for (const std::string& dir : candidates) {
    if (std::filesystem::exists(std::filesystem::path(dir) / "minilm_s0.safetensors")) return dir;
  }
  throw Error(ErrorCode::Io, "no MiniLM fixtures (minilm_s0.safetensors) in " + candidates.front() +
                                 "; pass --data DIR or set MICACHE_DATA_DIR");
}

Sentence load_sentence(const std::string& dir, const std::string& name) {
  Sentence s{name, (std::filesystem::path(dir) / ("minilm_" + name + ".safetensors")).string(), {}, {}};
  const SafetensorsReader file(s.path);
  const std::string* text = file.metadata("text");
  const std::string* tokens = file.metadata("tokens");
  const nlohmann::json list = nlohmann::json::parse(tokens != nullptr ? *tokens : "", nullptr, false);
  if (text == nullptr || !list.is_array()) throw Error(ErrorCode::Io, s.path + ": no 'text' or 'tokens' metadata");
  s.text = *text;
  for (const nlohmann::json& token : list) {
    if (!token.is_string()) throw Error(ErrorCode::Io, s.path + ": a token is not a string");
    s.tokens.push_back(token.get<std::string>());
  }
  return s;
}

}  // namespace micache::cli
