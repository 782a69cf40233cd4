// SQZ_CHECK: invariants whose violation is a bug. On failure it prints file, line, the condition
// and any streamed message to stderr and aborts. Never use it for bad input: that is a Status.
//
//   SQZ_CHECK(n <= capacity_) << "n=" << n;
//   SQZ_CHECK_EQ(a.size(), b.size());
#pragma once

#include <sstream>

namespace sqz::internal {

class CheckFailure {
 public:
  CheckFailure(const char* file, int line, const char* condition);
  CheckFailure(const CheckFailure&) = delete;
  CheckFailure& operator=(const CheckFailure&) = delete;
  [[noreturn]] ~CheckFailure();
  std::ostream& stream() { return stream_; }

 private:
  std::ostringstream stream_;
};

// Lets `SQZ_CHECK(c) << x` compile to a void expression in the ternary below.
struct Voidify {
  void operator&(std::ostream&) {}
};

}  // namespace sqz::internal

#define SQZ_CHECK(condition)                  \
  (condition) ? (void)0                       \
              : ::sqz::internal::Voidify() &  \
                    ::sqz::internal::CheckFailure(__FILE__, __LINE__, #condition).stream()

#define SQZ_CHECK_OP_(a, b, op) SQZ_CHECK((a)op(b)) << #a " = " << (a) << ", " #b " = " << (b) << " "
#define SQZ_CHECK_EQ(a, b) SQZ_CHECK_OP_(a, b, ==)
#define SQZ_CHECK_NE(a, b) SQZ_CHECK_OP_(a, b, !=)
#define SQZ_CHECK_LT(a, b) SQZ_CHECK_OP_(a, b, <)
#define SQZ_CHECK_LE(a, b) SQZ_CHECK_OP_(a, b, <=)
#define SQZ_CHECK_GT(a, b) SQZ_CHECK_OP_(a, b, >)
#define SQZ_CHECK_GE(a, b) SQZ_CHECK_OP_(a, b, >=)
