#include <iostream>
#include <string>
#include <vector>

#include "tools/fidelity/fidelity_cli.h"

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  return sqz::tools::RunFidelity(args, std::cout, std::cerr);
}
