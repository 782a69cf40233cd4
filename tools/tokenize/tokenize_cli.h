// sqz-tokenize: command-line access to the tokenizer, for debugging prompts and checking ids.
//
//   sqz-tokenize --model DIR [--no-bos] [--no-special] TEXT|-      -> {"ids":[...],"tokens":[...]}
//   sqz-tokenize --model DIR --decode [--skip-special] IDS|-       -> {"text":"..."}
//
// DIR holds tokenizer.json (+ tokenizer_config.json, generation_config.json). "-" reads the
// argument from standard input. IDS are integers separated by spaces or commas, optionally in
// [brackets]. Output is one line of JSON on stdout; errors go to stderr.
// Exit status: 0 on success, 1 on an error from the tokenizer or bad ids, 2 on a usage error.
#pragma once

#include <iosfwd>

namespace sqz {

// The whole program, with its streams injected for tests. argv[0] is the program name.
int RunTokenizeCli(int argc, const char* const* argv, std::istream& in, std::ostream& out,
                   std::ostream& err);

}  // namespace sqz
