// The Hub's dataset formats -> a plain image folder (hub_formats.h). Arrow reads every table: Parquet
// (parquet::arrow, one row group at a time), metadata.jsonl (arrow::json) and metadata.csv (arrow::csv,
// every column as text).
#include "data/hub_formats.h"

#include <arrow/api.h>
#include <arrow/csv/api.h>
#include <arrow/io/file.h>
#include <arrow/json/api.h>
#include <parquet/arrow/reader.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/sha256.h"
#include "core/strings.h"
#include "data/image.h"

namespace fluxtrain::data {
namespace fs = std::filesystem;
namespace {

constexpr int kFormatVersion = 1;  // of the converted folder: a change redoes every conversion
const std::vector<std::string> kCaptionNames = {"text", "caption", "prompt", "description", "alt_text", "title"};
const char* const kCaptionFix =
    "set PARAMS_CAPTION_COLUMN (--caption-column, caption_column) to the column that holds the captions";

struct DataFile {
  fs::path path;
  std::string rel;  // below the dataset folder, '/'-separated
  std::string config;
  std::string split;
  bool parquet = false;
};

// The Hub's split words, each to its canonical name.
std::string canonical_split(const std::string& word) {
  const std::string w = lower(word);
  if (w == "train" || w == "training") return "train";
  if (w == "validation" || w == "valid" || w == "val" || w == "dev") return "validation";
  if (w == "test" || w == "testing" || w == "eval" || w == "evaluation") return "test";
  return "";
}

// The split a word names: a split word, or the requested split's own name.
std::string split_of_word(const std::string& word, const std::string& requested) {
  if (std::string s = canonical_split(word); !s.empty()) return s;
  if (!requested.empty() && word == requested) return requested;
  return "";
}

std::vector<std::string> words_of(const std::string& stem) {
  std::vector<std::string> words;
  std::string word;
  for (char c : stem + "-") {
    if (c == '-' || c == '_' || c == '.' || c == ' ') {
      if (!word.empty()) words.push_back(word);
      word.clear();
    } else {
      word += c;
    }
  }
  return words;
}

bool is_data_file(const fs::path& p, bool* parquet) {
  const std::string name = p.filename().string();
  *parquet = lower(p.extension().string()) == ".parquet";
  return *parquet || name == "metadata.jsonl" || name == "metadata.csv";
}

// Every Parquet and metadata file below `folder` (hidden names skipped, links not followed), sorted.
std::vector<DataFile> find_data_files(const fs::path& folder, const std::string& requested_split) {
  std::vector<DataFile> files;
  std::error_code ec;
  fs::recursive_directory_iterator it(folder, fs::directory_options::skip_permission_denied, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const fs::path& p = it->path();
    if (p.filename().string().starts_with(".")) {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    bool parquet = false;
    if (!it->is_regular_file(ec) || !is_data_file(p, &parquet)) continue;
    DataFile f{p, fs::relative(p, folder).generic_string(), "default", "", parquet};
    std::vector<std::string> dirs;
    for (const auto& part : fs::path(f.rel).parent_path()) dirs.push_back(part.string());
    if (!dirs.empty() && dirs[0] != "data" && split_of_word(dirs[0], requested_split).empty()) f.config = dirs[0];
    if (!dirs.empty()) dirs.erase(dirs.begin());
    for (auto d = dirs.rbegin(); d != dirs.rend() && f.split.empty(); ++d) f.split = split_of_word(*d, requested_split);
    if (f.split.empty() && !fs::path(f.rel).parent_path().empty() && f.config == "default") {
      f.split = split_of_word(fs::path(f.rel).begin()->string(), requested_split);
    }
    for (const std::string& w : words_of(p.stem().string())) {
      if (!f.split.empty()) break;
      f.split = split_of_word(w, requested_split);
    }
    if (f.split.empty()) f.split = "train";
    files.push_back(std::move(f));
  }
  if (ec) fail("cannot list ", folder.string(), ": ", ec.message());
  std::sort(files.begin(), files.end(), [](const DataFile& a, const DataFile& b) { return a.rel < b.rel; });
  return files;
}

// --- Arrow columns

bool is_bytes_type(const arrow::DataType& t) {
  return t.id() == arrow::Type::BINARY || t.id() == arrow::Type::LARGE_BINARY || t.id() == arrow::Type::BINARY_VIEW;
}
bool is_text_type(const arrow::DataType& t) {
  return t.id() == arrow::Type::STRING || t.id() == arrow::Type::LARGE_STRING || t.id() == arrow::Type::STRING_VIEW;
}
// Bytes, or the `datasets` Image feature: struct<bytes: binary, path: string>.
bool is_image_type(const arrow::DataType& t) {
  if (is_bytes_type(t)) return true;
  if (t.id() != arrow::Type::STRUCT) return false;
  const auto bytes = static_cast<const arrow::StructType&>(t).GetFieldByName("bytes");
  return bytes && is_bytes_type(*bytes->type());
}

std::string describe_columns(const arrow::Schema& schema) {
  std::vector<std::string> out;
  for (const auto& f : schema.fields()) out.push_back(cat(f->name(), " (", f->type()->ToString(), ")"));
  return out.empty() ? "none" : join(out);
}

// The value of row i of a string or binary column; nullopt for a null.
std::optional<std::string_view> text_at(const arrow::Array& a, int64_t i) {
  if (a.IsNull(i)) return std::nullopt;
  switch (a.type_id()) {
    case arrow::Type::STRING:
    case arrow::Type::BINARY:
      return static_cast<const arrow::BinaryArray&>(a).GetView(i);
    case arrow::Type::LARGE_STRING:
    case arrow::Type::LARGE_BINARY:
      return static_cast<const arrow::LargeBinaryArray&>(a).GetView(i);
    case arrow::Type::STRING_VIEW:
    case arrow::Type::BINARY_VIEW:
      return static_cast<const arrow::BinaryViewArray&>(a).GetView(i);
    default:
      return std::nullopt;
  }
}

template <typename T>
T check(arrow::Result<T> result, const fs::path& file, const char* what) {
  if (!result.ok()) fail(file.string(), ": ", what, ": ", result.status().message());
  return std::move(result).ValueUnsafe();
}

// One table source: a Parquet file read a row group at a time, or a metadata file read whole.
class TableFile {
 public:
  explicit TableFile(const DataFile& f) : file_(f) {
    try {
      auto input = check(arrow::io::ReadableFile::Open(f.path.string()), f.path, "cannot open");
      if (f.parquet) {
        parquet_ = check(parquet::arrow::OpenFile(input, arrow::default_memory_pool()), f.path,
                         "not a readable Parquet file");
        std::shared_ptr<arrow::Schema> schema;
        const arrow::Status st = parquet_->GetSchema(&schema);
        if (!st.ok()) fail(f.path.string(), ": not a readable Parquet file: ", st.message());
        schema_ = schema;
        groups_ = parquet_->num_row_groups();
      } else if (f.path.extension() == ".jsonl") {
        auto reader = check(arrow::json::TableReader::Make(arrow::default_memory_pool(), input,
                                                           arrow::json::ReadOptions::Defaults(),
                                                           arrow::json::ParseOptions::Defaults()),
                            f.path, "not JSON lines");
        whole_ = check(reader->Read(), f.path, "not JSON lines (one object per line)");
      } else {
        auto convert = arrow::csv::ConvertOptions::Defaults();
        convert.default_column_type = arrow::utf8();  // every value as written, no type guessing
        auto reader = check(arrow::csv::TableReader::Make(arrow::io::default_io_context(), input,
                                                          arrow::csv::ReadOptions::Defaults(),
                                                          arrow::csv::ParseOptions::Defaults(), convert),
                            f.path, "not CSV with a header row");
        whole_ = check(reader->Read(), f.path, "not CSV with a header row");
      }
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {  // parquet throws ParquetException on some corrupt files
      fail(f.path.string(), ": not a readable ", f.parquet ? "Parquet" : "metadata", " file: ", e.what());
    }
    if (whole_) {
      schema_ = whole_->schema();
      groups_ = 1;
    }
  }
  const arrow::Schema& schema() const { return *schema_; }
  int groups() const { return groups_; }
  std::shared_ptr<arrow::Table> group(int i) {
    if (whole_) return whole_;
    try {
      return check(parquet_->ReadRowGroup(i), file_.path, cat("row group ", i, " cannot be read").c_str());
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {
      fail(file_.path.string(), ": row group ", i, " cannot be read: ", e.what());
    }
  }

 private:
  const DataFile& file_;
  std::unique_ptr<parquet::arrow::FileReader> parquet_;
  std::shared_ptr<arrow::Table> whole_;
  std::shared_ptr<arrow::Schema> schema_;
  int groups_ = 0;
};

struct Columns {
  std::string image;    // Parquet: the image column; imagefolder: file_name
  std::string caption;
};

Columns choose_columns(const arrow::Schema& schema, const DataFile& f, const std::string& caption_column) {
  Columns c;
  if (f.parquet) {
    const auto named = schema.GetFieldByName("image");
    if (named && is_image_type(*named->type())) {
      c.image = "image";
    } else {
      for (const auto& field : schema.fields()) {
        if (is_image_type(*field->type())) {
          c.image = field->name();
          break;
        }
      }
    }
    if (c.image.empty()) {
      fail(f.path.string(), " has no image column: its columns are ", describe_columns(schema),
           "; expected a column of image bytes (binary) or the Hub's Image feature (struct<bytes: binary, path: "
           "string>). A dataset whose images are URLs or paths only is not supported: download the images into a "
           "folder with caption .txt files");
    }
  } else {
    const auto name = schema.GetFieldByName("file_name");
    if (!name || !is_text_type(*name->type())) {
      fail(f.path.string(), " has no file_name column of text: its columns are ", describe_columns(schema),
           "; expected each row to name its image (relative to the metadata file) in file_name, as the Hub's "
           "imagefolder");
    }
    c.image = "file_name";
  }
  if (!caption_column.empty()) {
    const auto field = schema.GetFieldByName(caption_column);
    if (!field) {
      fail("caption_column '", caption_column, "' is not a column of ", f.path.string(), ": its columns are ",
           describe_columns(schema), "; set PARAMS_CAPTION_COLUMN (--caption-column) to one of them");
    }
    if (!is_text_type(*field->type())) {
      fail("caption_column '", caption_column, "' of ", f.path.string(), " holds ", field->type()->ToString(),
           ", not text: its columns are ", describe_columns(schema),
           "; set PARAMS_CAPTION_COLUMN (--caption-column) to a text column");
    }
    c.caption = caption_column;
    return c;
  }
  for (const std::string& wanted : kCaptionNames) {
    for (const auto& field : schema.fields()) {
      if (lower(field->name()) == wanted && field->name() != c.image && is_text_type(*field->type())) {
        c.caption = field->name();
        return c;
      }
    }
  }
  std::vector<std::string> strings;
  for (const auto& field : schema.fields()) {
    if (field->name() != c.image && is_text_type(*field->type())) strings.push_back(field->name());
  }
  if (strings.size() == 1) {
    c.caption = strings[0];
    return c;
  }
  fail(f.path.string(), " has no caption column: its columns are ", describe_columns(schema), "; expected a text ",
       "column named ", join(kCaptionNames), " (any letter case), or exactly one text column besides the image's",
       strings.empty() ? "" : cat(" (there are ", strings.size(), ": ", join(strings), ")"), "; ", kCaptionFix);
}

std::string read_file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  if (!in && !in.eof()) fail("cannot read ", path.string());
  return s.str();
}

// A path a row names (an imagefolder's file_name, an Image feature's path without bytes), relative to its
// data file, kept inside the dataset folder.
fs::path row_path(const fs::path& folder, const DataFile& f, std::string_view name, const std::string& where) {
  const fs::path p = (f.path.parent_path() / fs::path(std::string(name))).lexically_normal();
  const fs::path rel = p.lexically_relative(folder.lexically_normal());
  if (fs::path(std::string(name)).is_absolute() || rel.empty() || *rel.begin() == "..") {
    fail(where, ": the image '", name, "' is outside the dataset folder ", folder.string(),
         "; expected a path relative to ", f.path.parent_path().string());
  }
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) {
    fail(where, ": the image '", name, "' does not exist (looked for ", p.string(), "); expected a path relative to ",
         f.path.parent_path().string());
  }
  return p;
}

// --- the converted folder

struct Selection {
  std::vector<DataFile> files;
  std::string config, split;
};

Selection select(std::vector<DataFile> all, const HubFormatOptions& o, const fs::path& folder) {
  const bool any_parquet = std::any_of(all.begin(), all.end(), [](const DataFile& f) { return f.parquet; });
  std::erase_if(all, [&](const DataFile& f) { return f.parquet != any_parquet; });
  std::set<std::string> configs;
  for (const auto& f : all) configs.insert(f.config);
  Selection s;
  if (!o.config_name.empty()) {
    if (!configs.count(o.config_name)) {
      fail("dataset_config_name '", o.config_name, "' is not a config of ", folder.string(), ": its configs are ",
           join({configs.begin(), configs.end()}), "; set PARAMS_DATASET_CONFIG_NAME (--dataset-config-name) to one");
    }
    s.config = o.config_name;
  } else if (configs.size() == 1) {
    s.config = *configs.begin();
  } else {
    fail(folder.string(), " holds several configs (", join({configs.begin(), configs.end()}),
         "): set PARAMS_DATASET_CONFIG_NAME (--dataset-config-name) to the one to train on");
  }
  const std::string split = o.split.empty() ? "train" : o.split;
  const std::string wanted = canonical_split(split).empty() ? split : canonical_split(split);
  std::set<std::string> splits;
  for (const auto& f : all) {
    if (f.config != s.config) continue;
    splits.insert(f.split);
    if (f.split == wanted) s.files.push_back(f);
  }
  if (s.files.empty()) {
    fail("dataset_split '", split, "' is not a split of ", folder.string(),
         s.config == "default" ? "" : cat(" (config ", s.config, ")"), ": its splits are ",
         join({splits.begin(), splits.end()}), "; set PARAMS_DATASET_SPLIT (--dataset-split) to one");
  }
  s.split = wanted;
  return s;
}

std::string readable(const std::string& name) {
  std::string out;
  for (char c : name) out += (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_') ? c : '_';
  return out.empty() ? "dataset" : out.substr(0, 60);
}

// An exclusive flock held for the object's life (the converters of one folder take turns).
class TurnLock {
 public:
  explicit TurnLock(const fs::path& file) {
    fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0 || ::flock(fd_, LOCK_EX) != 0) fail("cannot lock ", file.string());
  }
  ~TurnLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  TurnLock(const TurnLock&) = delete;
  TurnLock& operator=(const TurnLock&) = delete;

 private:
  int fd_ = -1;
};

struct Written {
  int64_t images = 0, captions = 0, skipped = 0;
  Columns columns;
};

Written convert(const fs::path& folder, const Selection& s, const HubFormatOptions& o, const fs::path& out) {
  Written w;
  std::optional<Columns> chosen;
  for (const DataFile& f : s.files) {
    TableFile table(f);
    const Columns c = choose_columns(table.schema(), f, o.caption_column);
    if (!chosen) chosen = c;
    if (c.image != chosen->image || c.caption != chosen->caption) {
      fail(f.path.string(), ": its image/caption columns (", c.image, ", ", c.caption, ") differ from those of ",
           s.files.front().path.string(), " (", chosen->image, ", ", chosen->caption, "); ", kCaptionFix);
    }
    int64_t row = 0;
    for (int g = 0; g < table.groups(); ++g) {
      const std::shared_ptr<arrow::Table> rows = table.group(g);  // the reader keeps only a reference
      arrow::TableBatchReader batches(*rows);
      std::shared_ptr<arrow::RecordBatch> batch;
      while (true) {
        if (!batches.ReadNext(&batch).ok() || !batch) break;
        const auto image = batch->GetColumnByName(c.image);
        const auto caption = batch->GetColumnByName(c.caption);
        std::shared_ptr<arrow::Array> bytes, path;
        if (image->type_id() == arrow::Type::STRUCT) {
          const auto& st = static_cast<const arrow::StructArray&>(*image);
          bytes = st.GetFieldByName("bytes");
          path = st.GetFieldByName("path");
          if (path && !is_text_type(*path->type())) path = nullptr;
        } else {
          bytes = image;
        }
        for (int64_t i = 0; i < batch->num_rows(); ++i, ++row) {
          const std::string where = cat(f.path.string(), ", row ", row);
          std::string data;
          std::optional<std::string_view> b = image->IsNull(i) ? std::nullopt : text_at(*bytes, i);
          if (!f.parquet && b) {
            data = read_file_bytes(row_path(folder, f, *b, where));  // an imagefolder's file_name
          } else if (b) {
            data.assign(b->data(), b->size());
          } else if (auto p = (path && !image->IsNull(i)) ? text_at(*path, i) : std::nullopt; p && !p->empty()) {
            data = read_file_bytes(row_path(folder, f, *p, where));
          } else {
            log::warn(where, ": no image (", c.image, " is null): row skipped");
            ++w.skipped;
            continue;
          }
          ImageInfo info;
          try {
            info = probe_image_bytes({reinterpret_cast<const std::uint8_t*>(data.data()), data.size()}, where);
          } catch (const Error& e) {
            if (++w.skipped <= 5) log::warn(e.what(), ": row skipped");
            continue;
          }
          const std::string ext = info.format == "jpeg" ? "jpg" : info.format;
          char stem[32];
          std::snprintf(stem, sizeof stem, "%08lld", static_cast<long long>(w.images));
          {
            std::ofstream img(out / (std::string(stem) + "." + ext), std::ios::binary);
            img.write(data.data(), static_cast<std::streamsize>(data.size()));
            if (!img) fail("cannot write ", (out / stem).string(), ".", ext);
          }
          ++w.images;
          if (auto text = text_at(*caption, i)) {
            std::ofstream txt(out / (std::string(stem) + ".txt"), std::ios::binary);
            txt.write(text->data(), static_cast<std::streamsize>(text->size()));
            if (!txt) fail("cannot write ", (out / stem).string(), ".txt");
            ++w.captions;
          }
        }
      }
    }
  }
  if (w.skipped > 5) log::warn(w.skipped, " rows skipped in all (their images are missing or unreadable)");
  w.columns = *chosen;
  return w;
}

}  // namespace

HubLayout detect_hub_layout(const fs::path& folder) {
  const std::vector<DataFile> files = find_data_files(folder, "");
  if (files.empty()) return HubLayout::plain;
  return std::any_of(files.begin(), files.end(), [](const DataFile& f) { return f.parquet; }) ? HubLayout::parquet
                                                                                              : HubLayout::imagefolder;
}

fs::path prepare_hub_dataset(const fs::path& folder, const HubFormatOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(folder, ec)) return folder;
  std::vector<DataFile> all = find_data_files(folder, options.split);
  if (all.empty()) {
    if (!options.caption_column.empty() || !options.config_name.empty() || options.split != "train") {
      log::warn("dataset_split, dataset_config_name and caption_column have no effect on ", folder.string(),
                ": it holds no Parquet file, metadata.jsonl or metadata.csv");
    }
    return folder;
  }
  const Selection s = select(std::move(all), options, folder);
  const bool parquet = s.files.front().parquet;

  // The key: where it comes from, what is asked of it, and what its data files are now.
  const fs::path source = fs::weakly_canonical(folder, ec);
  std::ostringstream key;
  key << kFormatVersion << '\n' << source.string() << '\n' << s.config << '\n' << s.split << '\n'
      << options.caption_column << '\n';
  for (const DataFile& f : s.files) {
    const auto size = fs::file_size(f.path, ec);
    const auto time = fs::last_write_time(f.path, ec).time_since_epoch().count();
    key << f.rel << ' ' << size << ' ' << time << '\n';
  }
  const fs::path root = options.cache_dir / "converted" / (readable(source.filename().string()) + "-" +
                                                            sha256_hex(key.str()).substr(0, 12));
  const fs::path done = root / "complete.json", dataset = root / "dataset";
  fs::create_directories(root);
  const TurnLock lock(root / ".lock");
  if (fs::exists(done, ec)) {
    log::info("dataset ", folder.string(), " (", parquet ? "Parquet" : "imagefolder", ", split ", s.split,
              "): converted before, in ", dataset.string());
    return dataset;
  }
  const fs::path partial = root / "dataset.partial";
  fs::remove_all(partial);
  fs::remove_all(dataset);
  fs::create_directories(partial);
  Written w;
  try {
    w = convert(folder, s, options, partial);
  } catch (...) {
    fs::remove_all(root, ec);  // nothing half-written stays behind
    throw;
  }
  if (w.images == 0) {
    fs::remove_all(root, ec);
    fail("dataset_split '", s.split, "' of ", folder.string(), " has no usable image (", w.skipped,
         " rows skipped): check the files, or choose another split with PARAMS_DATASET_SPLIT");
  }
  fs::rename(partial, dataset);
  nlohmann::ordered_json marker = {{"format_version", kFormatVersion},
                                   {"source", source.string()},
                                   {"layout", parquet ? "parquet" : "imagefolder"},
                                   {"config", s.config},
                                   {"split", s.split},
                                   {"images_from", w.columns.image},
                                   {"captions_from", w.columns.caption},
                                   {"images", w.images},
                                   {"captions", w.captions},
                                   {"skipped_rows", w.skipped},
                                   {"files", nlohmann::json::array()}};
  for (const DataFile& f : s.files) marker["files"].push_back(f.rel);
  fsync_directory(root.string());
  write_file_atomic(done.string(), marker.dump(2) + "\n");
  log::info("dataset ", folder.string(), " (", parquet ? "Parquet" : "imagefolder", ", config ", s.config,
            ", split ", s.split, ", images from '", w.columns.image, "', captions from '", w.columns.caption,
            "'): ", w.images, " images, ", w.captions, " captions", w.skipped ? cat(", ", w.skipped, " rows skipped") : "",
            " from ", s.files.size(), " files, into ", dataset.string());
  return dataset;
}

}  // namespace fluxtrain::data
