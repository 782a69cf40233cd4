#include "engine/model/hf_loader.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <vector>

#include "engine/model/config.h"
#include "engine/model/safetensors.h"

namespace sqz {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

// The open weight files and which one holds each tensor.
class WeightSource {
 public:
  // Opens model.safetensors or the shards of model.safetensors.index.json under dir.
  Status Open(const std::string& dir) {
    const fs::path index = fs::path(dir) / "model.safetensors.index.json";
    const fs::path single = fs::path(dir) / "model.safetensors";
    std::error_code ec;
    if (fs::exists(index, ec)) return OpenSharded(dir, index.string());
    if (!fs::exists(single, ec)) {
      return NotFoundError(dir + ": no model.safetensors or model.safetensors.index.json");
    }
    SQZ_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single.string()));
    for (const auto& [name, view] : file->tensors()) where_[name] = file.get();
    files_.push_back(std::move(file));
    return OkStatus();
  }

  // The tensor, or NOT_FOUND naming where it was looked for.
  StatusOr<const TensorView*> Find(const std::string& name) const {
    auto it = where_.find(name);
    if (it != where_.end()) {
      if (const TensorView* t = it->second->Find(name)) return t;
      return NotFoundError("tensor " + name + " is listed in the index but not found in " +
                           it->second->path());
    }
    return NotFoundError("tensor " + name + " not found in " + Describe());
  }

  bool Has(const std::string& name) const { return where_.count(name) > 0; }

 private:
  Status OpenSharded(const std::string& dir, const std::string& index_path) {
    SQZ_ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
    json j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      return InvalidArgumentError(index_path + ": not a valid JSON object");
    }
    auto wm = j.find("weight_map");
    if (wm == j.end() || !wm->is_object()) {
      return InvalidArgumentError(index_path + ": no \"weight_map\" object");
    }
    std::map<std::string, SafetensorsFile*> by_file;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) {
        return InvalidArgumentError(index_path + ": weight_map[\"" + it.key() +
                                    "\"] is not a file name");
      }
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard == "..") {
        return InvalidArgumentError(index_path + ": shard name \"" + shard +
                                    "\" must be a plain file name in the model directory");
      }
      auto f = by_file.find(shard);
      if (f == by_file.end()) {
        auto opened = SafetensorsFile::Open((fs::path(dir) / shard).string());
        if (!opened.ok()) {
          return Status(opened.status().code(),
                        opened.status().message() + " (shard named by " + index_path + ")");
        }
        f = by_file.emplace(shard, opened->get()).first;
        files_.push_back(std::move(opened).value());
      }
      where_[it.key()] = f->second;
    }
    description_ = index_path;
    return OkStatus();
  }

  std::string Describe() const {
    if (!description_.empty()) return description_;
    return files_.empty() ? "(no files)" : files_[0]->path();
  }

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, SafetensorsFile*> where_;  // tensor name -> file (owned by files_)
  std::string description_;
};

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// Reads tensor `name` of the given shape into out (resized), converting to fp32.
Status Load(const WeightSource& src, const std::string& name, std::vector<int64_t> shape,
            std::vector<float>* out) {
  SQZ_ASSIGN_OR_RETURN(const TensorView* t, src.Find(name));
  if (t->shape != shape) {
    return InvalidArgumentError("tensor " + name + " has shape " + t->ShapeString() +
                                ", expected " + ShapeString(shape));
  }
  out->resize(t->NumElements());
  return ToFloat32(*t, out->data());
}

Status LoadWeights(const WeightSource& src, const ModelConfig& c, ModelWeights* w) {
  SQZ_RETURN_IF_ERROR(Load(src, "model.embed_tokens.weight", {c.vocab, c.hidden}, &w->embedding));
  SQZ_RETURN_IF_ERROR(Load(src, "model.norm.weight", {c.hidden}, &w->final_norm));
  if (!c.tie_embeddings) {
    SQZ_RETURN_IF_ERROR(Load(src, "lm_head.weight", {c.vocab, c.hidden}, &w->lm_head));
  }
  w->layers.resize(c.layers);
  for (int64_t i = 0; i < c.layers; ++i) {
    LayerWeights& l = w->layers[i];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    SQZ_RETURN_IF_ERROR(Load(src, p + "input_layernorm.weight", {c.hidden}, &l.attn_norm));
    SQZ_RETURN_IF_ERROR(Load(src, p + "self_attn.q_proj.weight", {c.q_dim(), c.hidden}, &l.wq));
    SQZ_RETURN_IF_ERROR(Load(src, p + "self_attn.k_proj.weight", {c.kv_dim(), c.hidden}, &l.wk));
    SQZ_RETURN_IF_ERROR(Load(src, p + "self_attn.v_proj.weight", {c.kv_dim(), c.hidden}, &l.wv));
    if (c.qkv_bias) {
      SQZ_RETURN_IF_ERROR(Load(src, p + "self_attn.q_proj.bias", {c.q_dim()}, &l.bq));
      SQZ_RETURN_IF_ERROR(Load(src, p + "self_attn.k_proj.bias", {c.kv_dim()}, &l.bk));
      SQZ_RETURN_IF_ERROR(Load(src, p + "self_attn.v_proj.bias", {c.kv_dim()}, &l.bv));
    }
    SQZ_RETURN_IF_ERROR(Load(src, p + "self_attn.o_proj.weight", {c.hidden, c.q_dim()}, &l.wo));
    SQZ_RETURN_IF_ERROR(Load(src, p + "post_attention_layernorm.weight", {c.hidden}, &l.ffn_norm));
    SQZ_RETURN_IF_ERROR(
        Load(src, p + "mlp.gate_proj.weight", {c.intermediate, c.hidden}, &l.w_gate));
    SQZ_RETURN_IF_ERROR(Load(src, p + "mlp.up_proj.weight", {c.intermediate, c.hidden}, &l.w_up));
    SQZ_RETURN_IF_ERROR(
        Load(src, p + "mlp.down_proj.weight", {c.hidden, c.intermediate}, &l.w_down));
  }
  return w->Validate(c);
}

}  // namespace

StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(path + ": no such file or not readable");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StatusOr<std::unique_ptr<Model>> LoadHfModel(const std::string& dir) {
  const std::string config_path = (fs::path(dir) / "config.json").string();
  SQZ_ASSIGN_OR_RETURN(std::string text, ReadTextFile(config_path));
  auto config = ParseHfConfig(text);
  if (!config.ok()) return config.status().WithContext(dir);
  WeightSource src;
  SQZ_RETURN_IF_ERROR(src.Open(dir));
  auto model = std::make_unique<Model>();
  model->config = std::move(config).value();
  Status s = LoadWeights(src, model->config, &model->weights);
  if (!s.ok()) return s.WithContext(dir);
  return model;
}

}  // namespace sqz
