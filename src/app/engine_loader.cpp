#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "app/commands.h"
#include "app/knob_options.h"
#include "core/host_memory.h"
#include "core/log.h"

namespace fluxtrain::app {
namespace {

// What the torch-free executable answers for an engine command from its option table.
const char* const kReferenceFlags[] = {"--help", "-h", "--help-env", "--print-config"};

std::string executable_dir() {
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : exe.parent_path().string();
}

}  // namespace

bool runs_without_engine(int argc, char** argv) {
  bool version = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    // The program's own --help lists every command (each is registered with its table in the small
    // executable), and --version and --help-env need nothing of the engine either.
    if (arg == "--version" || arg == "--help-env" || arg == "--help" || arg == "-h") version = true;
    if (program_flag_takes_value(arg)) ++i;  // its value
    if (arg.empty() || arg[0] == '-') continue;
    for (const CommandInfo& info : command_infos()) {
      if (arg != info.name) continue;
      if (!info.needs_engine) return true;
      for (int j = i + 1; j < argc; ++j) {
        for (const char* flag : kReferenceFlags) {
          if (std::strcmp(argv[j], flag) == 0) return true;
        }
      }
    }
    return false;
  }
  return version;
}

int run_engine(int argc, char** argv) {
  std::vector<std::string> candidates;
  std::string engine;
  try {
    engine = resolve(process_options(), {{}, environment()}).bind<ProcessSettings>().engine;
  } catch (const Error& e) {
    log::error(e.what());
    return 1;
  }
  if (!engine.empty()) {
    candidates.push_back(engine);
  } else {
    std::string dir = executable_dir();
    candidates.push_back(dir + "/libfluxtrain_engine.so");
    candidates.push_back(dir + "/../lib/fluxtrain/libfluxtrain_engine.so");
  }
  std::string errors;
  for (const std::string& path : candidates) {
    if (!std::filesystem::exists(path)) {
      errors += "\n  " + path + ": not found";
      continue;
    }
    core::prefer_huge_pages_for_tensors();  // before libtorch is loaded and allocates
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      errors += "\n  " + path + ": " + ::dlerror();
      continue;
    }
    using EntryPoint = int (*)(int, char**);
    auto entry = reinterpret_cast<EntryPoint>(::dlsym(handle, "fluxtrain_engine_main"));
    if (entry == nullptr) {
      errors += "\n  " + path + ": no fluxtrain_engine_main (a mismatched build?)";
      continue;
    }
    // The engine is never unloaded: libtorch does not support it, and the process ends right after.
    return entry(argc, argv);
  }
  log::error(
      "cannot load the fluxtrain engine (libfluxtrain_engine.so, which links libtorch):", errors,
      "\n  fix: rebuild (`make build`), keep the library beside the fluxtrain executable, or point "
      "FLUXTRAIN_ENGINE at it; if libtorch itself is missing, run scripts/setup.sh or set Torch_DIR at build time");
  return 1;
}

}  // namespace fluxtrain::app
