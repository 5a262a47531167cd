#include "train/checkpointing.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <memory>

#include "models/attention.h"

namespace fluxtrain::train {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct Recompute : torch::CustomClassHolder {
  BlockFn fn;
  CheckpointOptions options;
  std::vector<at::Tensor> generator_states;  // as they were when the block first ran
  std::vector<bool> requires_grad;
  std::vector<at::Device> devices{};
  std::shared_ptr<models::AttentionStash> stash;   // null without keep_attention
  std::shared_ptr<models::ProductStash> products;  // null when no product is kept
};

class CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
 public:
  // `inputs` must arrive as a TensorList: autograd tracks tensors and tensor lists among apply()'s
  // arguments, but a std::vector<Tensor> would be taken for an opaque value.
  static variable_list forward(AutogradContext* ctx, c10::intrusive_ptr<Recompute> state, at::TensorList inputs) {
    for (auto& g : state->options.generators) state->generator_states.push_back(g.get_state());
    std::vector<at::Tensor> saved;
    for (const auto& x : inputs) {
      state->requires_grad.push_back(x.requires_grad());
      state->devices.push_back(x.device());
      at::Tensor s = x.detach();
      if (state->options.offload_inputs && !x.device().is_cpu()) {
        s = at::empty(x.sizes(), x.options().device(at::kCPU).pinned_memory(true));
        s.copy_(x, /*non_blocking=*/true);
      }
      saved.push_back(s);
    }
    variable_list outputs;
    {
      at::NoGradGuard no_grad;
      if (state->stash) state->stash->start_record();
      if (state->products) state->products->start_record();
      outputs = state->fn(inputs.vec(), state->stash.get(), state->products.get());
    }
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    ctx->saved_data["inputs"] = saved;
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto state = c10::static_intrusive_pointer_cast<Recompute>(ctx->saved_data["state"].toCapsule());
    auto saved = ctx->saved_data["inputs"].toTensorVector();
    variable_list inputs;
    for (size_t i = 0; i < saved.size(); ++i) {
      at::Tensor x = saved[i].device() == state->devices[i] ? saved[i] : saved[i].to(state->devices[i], true);
      inputs.push_back(x.detach().requires_grad_(state->requires_grad[i]));
    }
    // Replay the random state of the first run, then put back the state the rest of training expects.
    std::vector<at::Tensor> now;
    for (size_t i = 0; i < state->options.generators.size(); ++i) {
      now.push_back(state->options.generators[i].get_state());
      state->options.generators[i].set_state(state->generator_states[i]);
    }
    variable_list outputs;
    {
      at::AutoGradMode grad(true);
      if (state->stash) state->stash->start_replay();
      if (state->products) state->products->start_replay();
      outputs = state->fn(inputs, state->stash.get(), state->products.get());
    }
    for (size_t i = 0; i < now.size(); ++i) state->options.generators[i].set_state(now[i]);

    variable_list with_grad, grads;
    for (size_t i = 0; i < outputs.size(); ++i) {
      if (outputs[i].requires_grad() && grad_outputs[i].defined()) {
        with_grad.push_back(outputs[i]);
        grads.push_back(grad_outputs[i]);
      }
    }
    if (!with_grad.empty()) torch::autograd::backward(with_grad, grads);
    variable_list result;
    result.push_back(at::Tensor());  // for `state`
    for (auto& x : inputs) result.push_back(x.requires_grad() ? x.grad() : at::Tensor());
    return result;
  }
};

}  // namespace

std::vector<at::Tensor> checkpoint(const BlockFn& fn, const std::vector<at::Tensor>& inputs,
                                   const CheckpointOptions& options) {
  if (!options.enabled || !at::GradMode::is_enabled()) return fn(inputs, nullptr, nullptr);
  auto state = c10::make_intrusive<Recompute>();
  if (options.keep_attention) state->stash = std::make_shared<models::AttentionStash>();
  if (options.keep_products != models::KeepProducts::none) {
    state->products = std::make_shared<models::ProductStash>(options.keep_products);
  }
  // When no input requires grad (a frozen base feeds the first block) autograd would not record the
  // block at all, and the LoRA weights inside it would get no gradient: an empty tensor that requires
  // grad rides along so the node is always recorded. fn never sees it.
  state->fn = [fn](const std::vector<at::Tensor>& with_anchor, models::AttentionStash* stash,
                   models::ProductStash* products) {
    return fn(std::vector<at::Tensor>(with_anchor.begin(), with_anchor.end() - 1), stash, products);
  };
  state->options = options;
  std::vector<at::Tensor> with_anchor = inputs;
  with_anchor.push_back(at::empty({0}).requires_grad_(true));
  return CheckpointFunction::apply(state, at::TensorList(with_anchor));
}

at::Tensor flux_forward(models::FluxTransformerImpl& model, const models::FluxInputs& inputs,
                        const CheckpointOptions& options) {
  at::Tensor img, txt;
  models::BlockContext ctx = model.prepare(inputs, img, txt);
  const size_t n_double = model.double_blocks->size(), n_single = model.single_blocks->size();
  const size_t last = n_double + n_single - 1;  // never checkpointed (see checkpointing.h)
  const size_t interval = static_cast<size_t>(std::max<int64_t>(options.interval, 1));
  models::BlockHooks* hooks = model.block_hooks;
  // A block whose weights must leave the device between its forward and its backward (block swapping)
  // is checkpointed whatever the settings (`forced` below).
  // Set when this function returns: a block function that runs after that is a recomputation.
  auto returned = std::make_shared<bool>(false);
  size_t index = 0;
  auto run = [&](const BlockFn& block_fn, const std::vector<at::Tensor>& in) {
    const size_t i = index++;
    BlockFn fn = block_fn;
    // checkpoint_keep_products = auto: this block's own kept products.
    CheckpointOptions own = options;
    if (i < options.keep_per_block.size()) own.keep_products = options.keep_per_block[i];
    if (hooks) {
      fn = [block_fn, hooks, returned, i](const std::vector<at::Tensor>& x, models::AttentionStash* stash,
                                          models::ProductStash* products) {
        const auto b = static_cast<int64_t>(i);
        hooks->before_block(b, *returned ? models::BlockPass::recompute : models::BlockPass::forward);
        struct After {
          models::BlockHooks* hooks;
          int64_t i;
          ~After() { hooks->after_block(i); }
        } after{hooks, b};
        return block_fn(x, stash, products);
      };
      if (i != last && hooks->needs_recompute(static_cast<int64_t>(i))) {
        CheckpointOptions forced = own;
        forced.enabled = true;
        return checkpoint(fn, in, forced);
      }
    }
    return i == last || i % interval != 0 ? fn(in, nullptr, nullptr) : checkpoint(fn, in, own);
  };
  // The block functions run again in backward, after this function has returned: they hold their own
  // copy of the context (tensor handles, no data copies).
  for (const auto& item : *model.double_blocks) {
    auto block = item->as<models::DoubleBlock>();
    auto out = run(
        [block, ctx](const std::vector<at::Tensor>& x, models::AttentionStash* stash, models::ProductStash* products) {
          models::BlockContext local = ctx;
          local.vec = x[2];
          local.stash = stash;
          local.products = products;
          auto [i, t] = block->forward(x[0], x[1], local);
          return std::vector<at::Tensor>{i, t};
        },
        {img, txt, ctx.vec});
    img = out[0];
    txt = out[1];
  }
  at::Tensor x = at::cat({txt, img}, 1);
  for (const auto& item : *model.single_blocks) {
    auto block = item->as<models::SingleBlock>();
    x = run(
        [block, ctx](const std::vector<at::Tensor>& in, models::AttentionStash* stash, models::ProductStash* products) {
          models::BlockContext local = ctx;
          local.vec = in[1];
          local.stash = stash;
          local.products = products;
          return std::vector<at::Tensor>{block->forward(in[0], local)};
        },
        {x, ctx.vec})[0];
  }
  *returned = true;
  return model.finish(x.narrow(1, txt.size(1), img.size(1)), ctx);
}

}  // namespace fluxtrain::train
