// What a LoRA network is made of: rank, alpha, which blocks and layer types get adapters, split parts
// and dropouts (kohya's network_dim, network_alpha, train_blocks, ... names). Plain data, torch-free:
// the train option table fills it (src/app/train_options.cpp), lora/network.h builds from it.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>

#include "core/enum_names.h"

namespace fluxtrain::lora {

// kohya's train_blocks: which kind of transformer block gets adapters.
enum class TrainBlocks { all, single, double_ };
constexpr std::array<EnumName<TrainBlocks>, 3> enum_names(TrainBlocks) {
  return {{{"all", TrainBlocks::all}, {"single", TrainBlocks::single}, {"double", TrainBlocks::double_}}};
}

// kohya's save_precision: the dtype of a saved LoRA's tensors.
enum class SavePrecision { fp32, bf16, fp16 };
constexpr std::array<EnumName<SavePrecision>, 3> enum_names(SavePrecision) {
  return {{{"fp32", SavePrecision::fp32}, {"bf16", SavePrecision::bf16}, {"fp16", SavePrecision::fp16}}};
}

// The adapter of each Linear: kohya's LoRA, or LyCORIS's LoKr / LoHa (lora/lycoris.h).
enum class NetworkType { lora, lokr, loha };
constexpr std::array<EnumName<NetworkType>, 3> enum_names(NetworkType) {
  return {{{"lora", NetworkType::lora}, {"lokr", NetworkType::lokr}, {"loha", NetworkType::loha}}};
}

struct DropoutOptions {
  double neuron = 0;  // kohya `dropout`
  double rank = 0;    // kohya `rank_dropout`
  double module = 0;  // kohya `module_dropout`
};

// The member initialisers are the train option table's defaults (a unit test holds them equal).
struct LoraOptions {
  int64_t rank = 32;   // kohya network_dim (the seed's default)
  double alpha = 4.0;  // kohya network_alpha (0 -> rank; the seed's default)
  TrainBlocks train_blocks = TrainBlocks::all;
  std::string train_double_block_indices = "all";  // "all", "none", or "0,2,5-9"
  std::string train_single_block_indices = "all";
  // How the user named the selections, for the messages of the checks against the model's block counts.
  std::string double_blocks_origin = "the double block selection";
  std::string single_blocks_origin = "the single block selection";
  // Per-layer-type ranks (kohya's img_attn_dim ... single_mod_dim): absent = rank, 0 = no adapter there.
  std::map<std::string, int64_t>
      type_dims;  // keys: img_attn img_mlp img_mod txt_attn txt_mlp txt_mod single single_mod
  bool split_qkv = false;
  // dim_from_weights (kohya): exactly these Linears (model path -> rank of each trained part) get adapters,
  // whatever the selections and ranks above say; empty: those decide.
  std::map<std::string, int64_t> module_dims;
  DropoutOptions dropout;
  NetworkType type = NetworkType::lora;
  // LyCORIS's options (lora/lycoris.h): LoKr's factorization factor (-1: the factors nearest sqrt(dim)),
  // decompose_both (w1 low-rank too), full_matrix (w2 full whatever the rank), and DoRA on LoRA.
  int64_t factor = -1;
  bool decompose_both = false;
  bool full_matrix = false;
  bool dora_wd = false;
  // Whether the network is LyCORIS's rather than a plain LoRA (files say ss_network_module lycoris.kohya).
  bool lycoris() const { return type != NetworkType::lora || dora_wd; }
};

}  // namespace fluxtrain::lora
