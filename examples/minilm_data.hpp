// The bundled MiniLM fixtures (tests/data): where they are and what each sentence holds.
#pragma once

#include <string>
#include <vector>

namespace micache::cli {

/// One fixture sentence: its file and the WordPiece tokens the model saw.
struct Sentence {
  std::string name;  ///< "s0", "s1" or "s2"
  std::string path;  ///< its safetensors file
  std::string text;
  std::vector<std::string> tokens;
};

/// The fixture folder: `override` when not empty, else $MICACHE_DATA_DIR, else
/// the source tree's tests/data (compiled in), else tests/data under the
/// working directory. Error: Io when the folder holds no fixture.
std::string data_dir(const std::string& override);

/// Reads sentence `name`'s metadata from `dir`. Error: Io.
Sentence load_sentence(const std::string& dir, const std::string& name);

}  // namespace micache::cli
