// IncrementalDecoder: streaming detokenization that only ever returns whole UTF-8 characters.
#include "engine/tokenizer/tokenizer.h"
#include "engine/tokenizer/utf8.h"

namespace sqz {

IncrementalDecoder::IncrementalDecoder(const Tokenizer& tok, bool skip_special, bool continues_text)
    : tok_(tok), skip_special_(skip_special), prev_id_(continues_text ? -2 : -1) {}

std::string IncrementalDecoder::Push(int32_t id) {
  SQZ_CHECK(id >= 0 && id < tok_.vocab_size()) << "token id " << id << " out of range";
  tok_.AppendTokenBytes(id, skip_special_, tok_.StripsLeadingSpace(prev_id_, count_), &pending_);
  prev_id_ = id;
  ++count_;
  // Emit every whole character; keep a valid but unfinished one; replace bytes that can never
  // become a character.
  std::string out;
  size_t pos = 0;
  while (pos < pending_.size()) {
    size_t len = 0;
    const Utf8Status status = NextUtf8Char(pending_, pos, &len);
    if (status == Utf8Status::kTruncated) break;
    if (status == Utf8Status::kValid) {
      out.append(pending_, pos, len);
    } else {
      out.append(kReplacementChar);
    }
    pos += len;
  }
  pending_.erase(0, pos);
  return out;
}

std::string IncrementalDecoder::Flush() {
  std::string out = SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace sqz
