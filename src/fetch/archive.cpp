#include "fetch/archive.h"

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <unordered_set>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/log.h"
#include "core/stop.h"
#include "core/strings.h"

namespace fluxtrain::fetch {
namespace {

namespace fs = std::filesystem;

constexpr size_t kReadBlock = 64 << 10;

struct Reader {
  struct archive* handle = archive_read_new();
  Reader() {
    if (handle == nullptr) fail("cannot initialise libarchive (out of memory?)");
    archive_read_support_format_tar(handle);
    archive_read_support_format_zip(handle);
    archive_read_support_filter_gzip(handle);
    archive_read_support_filter_bzip2(handle);
    archive_read_support_filter_xz(handle);
    archive_read_support_filter_zstd(handle);
  }
  ~Reader() { archive_read_free(handle); }
  Reader(const Reader&) = delete;
  Reader& operator=(const Reader&) = delete;
  std::string error() const {
    const char* text = archive_error_string(handle);
    return text != nullptr ? text : "unknown libarchive error";
  }
};

// An entry name as it may be shown: control characters replaced, long names cut.
std::string printable(std::string_view name) {
  std::string out;
  for (char c : name.substr(0, 300)) out += static_cast<unsigned char>(c) < 0x20 || c == 0x7f ? '?' : c;
  if (name.size() > 300) out += "...";
  return out;
}

// Whether symbolic link `link` (a normalised path inside the folder) pointing at `target` resolves,
// lexically, outside the folder.
bool link_escapes(const std::string& link, std::string_view target) {
  if (target.empty() || target.front() == '/' || target.front() == '\\' ||
      (target.size() >= 2 && std::isalpha(static_cast<unsigned char>(target[0])) && target[1] == ':')) {
    return true;
  }
  std::vector<std::string> parts;
  for (size_t begin = 0, end; begin <= link.size(); begin = end + 1) {
    end = std::min(link.find('/', begin), link.size());
    parts.push_back(link.substr(begin, end - begin));
  }
  parts.pop_back();  // the link's own name: the target is relative to its folder
  std::string text(target);
  for (char& c : text) c = c == '\\' ? '/' : c;
  for (size_t begin = 0, end; begin <= text.size(); begin = end + 1) {
    end = std::min(text.find('/', begin), text.size());
    std::string part = text.substr(begin, end - begin);
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (parts.empty()) return true;
      parts.pop_back();
    } else {
      parts.push_back(part);
    }
  }
  return false;
}

class Extractor {
 public:
  // Reads the archive from `archive`, or from `bytes` when it is not null.
  Extractor(const fs::path& archive, const std::string_view* bytes, const fs::path& root, const ArchiveLimits& limits,
            std::string label)
      : archive_(archive), bytes_(bytes), root_(root), limits_(limits), label_(std::move(label)) {}

  ExtractStats run() {
    const int opened = bytes_ != nullptr ? archive_read_open_memory(reader_.handle, bytes_->data(), bytes_->size())
                                         : archive_read_open_filename(reader_.handle, archive_.c_str(), kReadBlock);
    if (opened != ARCHIVE_OK) fail("cannot read archive '", label_, "': ", reader_.error());
    std::string first_skipped_link;
    uint64_t entries = 0;
    while (true) {
      struct archive_entry* entry = nullptr;
      // A stop signal ends the extraction between entries and blocks; extract_archive removes its
      // temporary folder, the archive stays, and a restart extracts it again.
      stop::check("extraction");
      int rc = archive_read_next_header(reader_.handle, &entry);
      if (rc == ARCHIVE_EOF) break;
      if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
        fail("cannot read archive '", label_, "' at entry ", entries + 1, ": ", reader_.error(),
             " (corrupt, truncated, or not a zip/tar archive)");
      }
      if (++entries > limits_.max_entries) {
        fail("archive '", label_, "' has more than ", format_count(static_cast<long long>(limits_.max_entries)),
             " entries, the limit (FLUXTRAIN_ARCHIVE_MAX_ENTRIES raises it if the archive is trusted)");
      }
      const char* raw = archive_entry_pathname_utf8(entry);
      if (raw == nullptr) raw = archive_entry_pathname(entry);
      if (raw == nullptr) fail("archive '", label_, "': entry ", entries, " has no name");
      name_ = printable(raw);
      std::string why;
      const std::string path = normalize_relative_path(raw, &why);
      if (!why.empty()) refuse(why + ", which would be written outside the extraction folder");
      if (path == "__MACOSX" || path.starts_with("__MACOSX/")) {
        ++stats_.skipped;
        continue;
      }
      const char* hardlink = archive_entry_hardlink_utf8(entry);
      if (hardlink == nullptr) hardlink = archive_entry_hardlink(entry);
      const mode_t type = archive_entry_filetype(entry);
      if (hardlink != nullptr) {
        extract_hardlink(path, hardlink);
      } else if (type == AE_IFDIR) {
        if (!path.empty()) make_folders(root_ / path);
        ++stats_.folders;
      } else if (type == AE_IFREG) {
        if (path.empty()) refuse("a file without a name");
        extract_file(path, entry);
      } else if (type == AE_IFLNK) {
        const char* target = archive_entry_symlink_utf8(entry);
        if (target == nullptr) target = archive_entry_symlink(entry);
        std::string shown = printable(target != nullptr ? target : "");
        if (path.empty() || link_escapes(path, target != nullptr ? target : "")) {
          refuse(cat("a symbolic link to '", shown,
                     "', outside the extraction folder (such a link lets later entries "
                     "write anywhere)"));
        }
        if (first_skipped_link.empty()) first_skipped_link = cat("'", name_, "' -> '", shown, "'");
        ++stats_.skipped;
      } else {
        const char* kind = type == AE_IFCHR    ? "character device"
                           : type == AE_IFBLK  ? "block device"
                           : type == AE_IFIFO  ? "FIFO"
                           : type == AE_IFSOCK ? "socket"
                                               : "file of unknown type";
        refuse(cat("a ", kind, "; a dataset holds only files and folders"));
      }
    }
    if (!first_skipped_link.empty()) {
      log::warn(
          "archive '", label_, "': symbolic links are not extracted (the first: ", first_skipped_link,
          "); if the dataset needs them, repack it with the files they point to (tar --dereference, zip without -y)");
    }
    return stats_;
  }

 private:
  [[noreturn]] void refuse(const std::string& why) {
    fail("archive '", label_, "': entry '", name_, "' is ", why, "; refusing the archive (nothing was extracted)");
  }

  void make_folders(const fs::path& folder) {
    std::error_code ec;
    fs::create_directories(folder, ec);
    if (ec || !fs::is_directory(fs::symlink_status(folder))) {
      fail("archive '", label_, "': cannot create the folder for entry '", name_,
           "': ", ec ? ec.message() : "a file of that name exists", " (an entry is both a file and a folder?)");
    }
  }

  // A path for a new file: its folders exist, nothing but an old regular file is there.
  fs::path prepare_file(const std::string& path) {
    fs::path dest = root_ / path;
    make_folders(dest.parent_path());
    auto status = fs::symlink_status(dest);
    if (fs::exists(status)) {
      if (!fs::is_regular_file(status)) {
        fail("archive '", label_, "': entry '", name_, "' is a file where an earlier entry made a folder");
      }
      fs::remove(dest);  // a later entry of the same name replaces the file (tar semantics)
    }
    return dest;
  }

  void extract_hardlink(const std::string& path, const char* target) {
    std::string why;
    std::string target_path = normalize_relative_path(target, &why);
    if (path.empty() || !why.empty() || !files_.contains(target_path)) {
      refuse(
          cat("a hard link to '", printable(target), "', which is not a file extracted before it from this archive"));
    }
    fs::path dest = prepare_file(path);
    if (::link((root_ / target_path).c_str(), dest.c_str()) != 0) {
      fail("archive '", label_, "': cannot create hard link '", name_, "': ", std::strerror(errno));
    }
    files_.insert(path);
    ++stats_.files;
  }

  void extract_file(const std::string& path, struct archive_entry* entry) {
    const int64_t declared = archive_entry_size_is_set(entry) ? archive_entry_size(entry) : -1;
    if (declared > 0 && static_cast<uint64_t>(declared) > limits_.max_total_bytes - stats_.bytes) {
      fail("archive '", label_, "': entry '", name_, "' declares ", format_bytes(double(declared)), ", more than the ",
           format_bytes(double(limits_.max_total_bytes)), " limit on the uncompressed total",
           stats_.bytes > 0 ? cat(" (", format_bytes(double(stats_.bytes)), " already extracted)") : std::string(),
           "; FLUXTRAIN_ARCHIVE_MAX_BYTES raises it if the archive is trusted");
    }
    fs::path dest = prepare_file(path);
    int fd = ::open(dest.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd < 0) fail("archive '", label_, "': cannot create '", name_, "': ", std::strerror(errno));
    struct Closer {
      int fd;
      ~Closer() { ::close(fd); }
    } closer{fd};
    // The entry counts with its declared size (a sparse file's is its size with the holes, which the
    // data blocks alone would not show) or the extent written, whichever is larger.
    const uint64_t entry_start = stats_.bytes;
    const uint64_t declared_bytes = declared > 0 ? static_cast<uint64_t>(declared) : 0;
    const int64_t compressed_start = archive_filter_bytes(reader_.handle, -1);
    uint64_t extent = 0, data = 0;
    while (true) {
      const void* block = nullptr;
      size_t size = 0;
      la_int64_t offset = 0;
      stop::check("extraction");
      int rc = archive_read_data_block(reader_.handle, &block, &size, &offset);
      if (rc == ARCHIVE_EOF) break;
      if (rc != ARCHIVE_OK && rc != ARCHIVE_WARN) {
        fail("archive '", label_, "': cannot read entry '", name_, "': ", reader_.error(),
             " (corrupt, truncated or encrypted?)");
      }
      if (offset < 0)
        fail("archive '", label_, "': entry '", name_, "' has data at a negative offset: corrupt archive");
      data += size;
      extent = std::max<uint64_t>(extent, static_cast<uint64_t>(offset) + size);
      stats_.bytes = entry_start + std::max(extent, declared_bytes);
      if (stats_.bytes > limits_.max_total_bytes) {
        fail("archive '", label_, "' expands to more than ", format_bytes(double(limits_.max_total_bytes)),
             " (the limit on the uncompressed total), reached at entry '", name_,
             "'; FLUXTRAIN_ARCHIVE_MAX_BYTES raises it if the archive is trusted");
      }
      for (size_t done = 0; done < size;) {
        ssize_t n =
            ::pwrite(fd, static_cast<const char*>(block) + done, size - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
          int error = errno;
          fail("archive '", label_, "': cannot write '", name_, "' to ", dest, ": ", std::strerror(error),
               error == ENOSPC ? " (the disk is full: free space, or use another cache folder)" : "");
        }
        done += static_cast<size_t>(n);
      }
      const double compressed = double(archive_filter_bytes(reader_.handle, -1) - compressed_start) + kReadBlock;
      if (extent > limits_.ratio_allowance_bytes && double(extent) > limits_.max_ratio * compressed) {
        fail(
            "archive '", label_, "': entry '", name_, "' expands more than ", limits_.max_ratio, ":1 (",
            format_bytes(double(extent)), " so far from about ", format_bytes(compressed),
            " compressed): a decompression bomb? Refusing the archive; FLUXTRAIN_ARCHIVE_MAX_RATIO raises the limit if "
            "the archive is trusted");
      }
    }
    // The whole entry, holes included, against the same ratio: a sparse entry declaring a terabyte
    // with a few stored bytes (a sparse tar bomb) is refused before its size is given to the file.
    const uint64_t entry_bytes = std::max(extent, declared_bytes);
    stats_.bytes = entry_start + entry_bytes;
    const double compressed = double(archive_filter_bytes(reader_.handle, -1) - compressed_start) + kReadBlock;
    if (entry_bytes > limits_.ratio_allowance_bytes && double(entry_bytes) > limits_.max_ratio * compressed) {
      fail("archive '", label_, "': entry '", name_, "' declares ", format_bytes(double(entry_bytes)), " but holds ",
           format_bytes(double(data)), " of data",
           archive_entry_sparse_count(entry) > 0 ? " (a sparse file: the rest are holes)" : "", ", more than ",
           limits_.max_ratio,
           ":1: a sparse-file bomb? Refusing the archive; FLUXTRAIN_ARCHIVE_MAX_RATIO raises the limit if the archive "
           "is trusted");
    }
    if (declared > 0 && extent < declared_bytes && ::ftruncate(fd, declared) != 0) {
      fail("archive '", label_, "': cannot write '", name_, "': ", std::strerror(errno));
    }
    files_.insert(path);
    ++stats_.files;
  }

  const fs::path& archive_;
  const std::string_view* bytes_;
  const fs::path& root_;
  const ArchiveLimits& limits_;
  const std::string label_;
  Reader reader_;
  std::string name_;  // the current entry, printable
  std::unordered_set<std::string> files_;
  ExtractStats stats_;
};

}  // namespace

namespace {

ExtractStats extract(const fs::path& archive, const std::string_view* bytes, const fs::path& target,
                     const ArchiveLimits& limits, const std::string& label) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(target, ec))) {
    fail("cannot extract archive '", label, "' into ", target, ": it already exists (remove it first)");
  }
  fs::path parent = target.parent_path().empty() ? fs::path(".") : target.parent_path();
  fs::create_directories(parent, ec);
  if (ec) fail("cannot create the folder ", parent, ": ", ec.message());
  static std::atomic<int> counter{0};
  fs::path temp = parent / cat(".", target.filename().string(), ".extract-", ::getpid(), "-", counter++);
  fs::remove_all(temp, ec);
  if (!fs::create_directory(temp, ec)) fail("cannot create the folder ", temp, ": ", ec.message());
  try {
    ExtractStats stats = Extractor(archive, bytes, temp, limits, label).run();
    // One syncfs for all the files, instead of an fsync each, before the rename publishes them.
    int fd = ::open(temp.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      ::syncfs(fd);
      ::close(fd);
    }
    if (::rename(temp.c_str(), target.c_str()) != 0) {
      fail("cannot rename ", temp, " to ", target, ": ", std::strerror(errno));
    }
    fsync_directory(parent.string());
    return stats;
  } catch (...) {
    fs::remove_all(temp, ec);
    throw;
  }
}

}  // namespace

ExtractStats extract_archive(const fs::path& archive, const fs::path& target, const ArchiveLimits& limits,
                             const std::string& name) {
  return extract(archive, nullptr, target, limits, name.empty() ? archive.string() : name);
}

ExtractStats extract_archive_bytes(std::string_view bytes, const fs::path& target, const ArchiveLimits& limits,
                                   const std::string& name) {
  return extract({}, &bytes, target, limits, name);
}

bool is_archive(const fs::path& file) {
  std::error_code ec;
  if (!fs::is_regular_file(file, ec) || fs::file_size(file, ec) == 0) return false;
  Reader reader;
  if (archive_read_open_filename(reader.handle, file.c_str(), kReadBlock) != ARCHIVE_OK) return false;
  struct archive_entry* entry = nullptr;
  int rc = archive_read_next_header(reader.handle, &entry);
  return rc == ARCHIVE_OK || rc == ARCHIVE_WARN || (rc == ARCHIVE_EOF && archive_format(reader.handle) != 0);
}

bool has_archive_extension(std::string_view name) {
  const std::string text = lower(name);
  for (const char* ext : {".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz", ".tar.zst",
                          ".tzst", ".tar.zstd"}) {
    if (text.ends_with(ext)) return true;
  }
  return false;
}

std::string normalize_relative_path(std::string_view path, std::string* why) {
  why->clear();
  if (!path.empty() && (path.front() == '/' || path.front() == '\\')) {
    *why = "an absolute path";
    return "";
  }
  if (path.size() >= 2 && std::isalpha(static_cast<unsigned char>(path[0])) && path[1] == ':') {
    *why = "an absolute Windows path (drive letter)";
    return "";
  }
  std::string out;
  for (size_t begin = 0, end; begin <= path.size(); begin = end + 1) {
    end = std::min(path.find('/', begin), path.size());
    std::string_view part = path.substr(begin, end - begin);
    if (part.empty() || part == ".") continue;
    // No file system takes a longer name (NAME_MAX); refused here, not met as an exception while writing.
    if (part.size() > 255) {
      *why = cat("a path with a name of ", part.size(), " bytes (at most 255)");
      return "";
    }
    // Backslashes are separators on Windows: "..\\x" climbs there, so it is refused here too.
    for (size_t b = 0, e; b <= part.size(); b = e + 1) {
      e = std::min(part.find('\\', b), part.size());
      if (part.substr(b, e - b) == "..") {
        *why = "a path with a '..' component";
        return "";
      }
    }
    if (!out.empty()) out += '/';
    out += part;
  }
  // Nor a longer path (PATH_MAX, with room for the extraction folder in front).
  if (out.size() > 3000) {
    *why = cat("a path of ", out.size(), " bytes (at most 3000)");
    return "";
  }
  return out;
}

}  // namespace fluxtrain::fetch
