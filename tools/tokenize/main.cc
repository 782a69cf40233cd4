// sqz-tokenize: see tokenize_cli.h.
#include <iostream>

#include "tools/tokenize/tokenize_cli.h"

int main(int argc, char** argv) {
  return sqz::RunTokenizeCli(argc, argv, std::cin, std::cout, std::cerr);
}
