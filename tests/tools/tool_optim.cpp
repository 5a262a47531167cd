// Optimizer and schedule commands of fluxtrain_test_tool.
//   optim-run TYPE ARGS PROBLEM OUT [--steps 50] [--lr 1e-3] [--wd 0] [--schedule NAME --warmup W
//             --cycles C --power P] [--resume-at K]
//     Minimises the least-squares problem in PROBLEM for every parameter i: loss_i = 0.5 * ||P_i X_i - Y_i||²
//     with P_i = p.{i} viewed as [rows, x.{i}.size(0)], so grad_i = (P_i X_i - Y_i) X_iᵀ — the same formula
//     the Python side evaluates, so both see the gradient of their own current parameters. OUT gets
//     traj.{i} (the parameters after every step, stacked), lr (per step) and stat.{name} (stats() per
//     step). With --resume-at K the optimizer state is written after K steps (safetensors + JSON),
//     a fresh optimizer is built and loaded, and the run continues from it.
//   optim-quantize IN OUT
//     The 8-bit state's quantisation (optim/quantize.h) for tests/parity/test_optimizers.py: OUT gets
//     code.signed and code.unsigned (the two code books) and, for every float32 tensor x.{name} of IN,
//     {signed,unsigned}.codes.{name}, {signed,unsigned}.absmax.{name} and the dequantised
//     {signed,unsigned}.values.{name}.
//   lr-schedule CONFIGS.json
//     CONFIGS: a list of {name, steps, lr, warmup, cycles, power, rules, evaluate}; prints, per config, the
//     lr of steps 0..evaluate-1 (default: steps) as a JSON list of lists.
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "core/safetensors.h"
#include "optim/optimizer.h"
#include "optim/quantize.h"
#include "optim/schedule.h"
#include "tool.h"

namespace fluxtrain::tool {
namespace {

optim::ScheduleOptions schedule_options(const Args& args, const std::string& name, int64_t steps) {
  optim::ScheduleOptions s;
  s.name = name;
  s.num_training_steps = steps;
  s.warmup = std::stod(option(args, "--warmup", "0"));
  s.num_cycles = std::stod(option(args, "--cycles", "1"));
  s.power = std::stod(option(args, "--power", "1"));
  s.step_rules = option(args, "--rules", "");
  return s;
}

int optim_run(const Args& args) {
  const std::string type = args.at(0), opt_args = args.at(1), out_path = args.at(3);
  auto problem = load_tensors(args.at(2));
  const int64_t steps = std::stoll(option(args, "--steps", "50"));
  const int64_t resume_at = std::stoll(option(args, "--resume-at", "-1"));
  const double lr = std::stod(option(args, "--lr", "1e-3")), wd = std::stod(option(args, "--wd", "0"));
  optim::LrSchedule schedule(schedule_options(args, option(args, "--schedule", "constant"), steps), lr);

  std::vector<at::Tensor> params, xs, ys;
  for (size_t i = 0; problem.count("p." + std::to_string(i)); ++i) {
    params.push_back(problem.at("p." + std::to_string(i)).clone().requires_grad_(true));
    xs.push_back(problem.at("x." + std::to_string(i)));
    ys.push_back(problem.at("y." + std::to_string(i)));
  }
  auto optimizer = optim::make_optimizer(type, opt_args, params, lr, wd);
  std::vector<std::vector<at::Tensor>> traj(params.size());
  std::vector<double> lrs;
  std::map<std::string, std::vector<double>> stats;
  for (int64_t step = 0; step < steps; ++step) {
    if (step == resume_at) {
      namespace fs = std::filesystem;
      fs::path dir = fs::path(out_path).parent_path();
      safetensors::write((dir / "state.safetensors").string(), optimizer->state_tensors());
      std::ofstream((dir / "state.json").string()) << optimizer->state_scalars().dump();
      std::vector<at::Tensor> copies;
      for (const auto& p : params) copies.push_back(p.detach().clone().requires_grad_(true));
      params = copies;
      optimizer = optim::make_optimizer(type, opt_args, params, lr, wd);
      safetensors::Reader reader((dir / "state.safetensors").string());
      std::vector<std::pair<std::string, at::Tensor>> tensors;
      for (const auto& info : reader.header().tensors) tensors.emplace_back(info.name, reader.tensor(info));
      std::ifstream json_in((dir / "state.json").string());
      optimizer->load_state(tensors, nlohmann::json::parse(json_in));
    }
    for (size_t i = 0; i < params.size(); ++i) {
      at::NoGradGuard no_grad;
      const at::Tensor& x = xs[i];
      at::Tensor p = params[i].detach().reshape({-1, x.size(0)});
      params[i].mutable_grad() = at::matmul(at::matmul(p, x) - ys[i], x.t()).reshape(params[i].sizes());
    }
    optimizer->set_lr(schedule.lr(step));
    lrs.push_back(optimizer->lr());
    optimizer->step();
    optimizer->zero_grad();
    for (size_t i = 0; i < params.size(); ++i) traj[i].push_back(params[i].detach().clone());
    for (const auto& [name, value] : optimizer->stats()) stats[name].push_back(value);
  }
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < params.size(); ++i) out["traj." + std::to_string(i)] = at::stack(traj[i]);
  out["lr"] = at::tensor(lrs, at::kDouble);
  for (const auto& [name, values] : stats) out["stat." + name] = at::tensor(values, at::kDouble);
  save_tensors(out_path, out);
  std::cout << nlohmann::json{{"state_bytes", optimizer->state_bytes()}}.dump() << "\n";
  return 0;
}

int optim_quantize(const Args& args) {
  std::map<std::string, at::Tensor> out;
  for (const bool is_signed : {true, false}) {
    const std::string kind = is_signed ? "signed" : "unsigned";
    const at::Tensor code_book = optim::dynamic_code_book(is_signed);
    out["code." + kind] = code_book;
    for (const auto& [name, x] : load_tensors(args.at(0))) {
      if (name.rfind("x.", 0) != 0) continue;
      const std::string suffix = name.substr(2);
      optim::Quantized q = optim::quantize_blockwise(x, code_book);
      out[kind + ".codes." + suffix] = q.codes.view(x.sizes());
      out[kind + ".absmax." + suffix] = q.absmax;
      out[kind + ".values." + suffix] = optim::dequantize_blockwise(q, code_book, x);
    }
  }
  save_tensors(args.at(1), out);
  return 0;
}

int lr_schedule(const Args& args) {
  std::ifstream in(args.at(0));
  nlohmann::json out = nlohmann::json::array();
  for (const auto& c : nlohmann::json::parse(in)) {
    optim::ScheduleOptions s;
    s.name = c.at("name").get<std::string>();
    s.num_training_steps = c.at("steps").get<int64_t>();
    s.warmup = c.value("warmup", 0.0);
    s.num_cycles = c.value("cycles", 1.0);
    s.power = c.value("power", 1.0);
    s.step_rules = c.value("rules", std::string());
    optim::LrSchedule schedule(s, c.value("lr", 1.0));
    nlohmann::json lrs = nlohmann::json::array();
    for (int64_t step = 0; step < c.value("evaluate", s.num_training_steps); ++step) lrs.push_back(schedule.lr(step));
    out.push_back(lrs);
  }
  std::cout << out.dump() << "\n";
  return 0;
}

const ToolCommand kRun("optim-run", "TYPE ARGS PROBLEM OUT [--steps N] [--lr X] [--wd Y] [--schedule NAME ...]",
                       optim_run);
const ToolCommand kQuantize("optim-quantize", "IN OUT", optim_quantize);
const ToolCommand kSchedule("lr-schedule", "CONFIGS.json", lr_schedule);

}  // namespace
}  // namespace fluxtrain::tool
