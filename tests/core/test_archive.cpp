// Archive extraction safety (src/fetch/archive.h): archives are written here with libarchive's writer,
// including hostile ones (path traversal, absolute paths, escaping links, devices, bombs).
#include <archive.h>
#include <archive_entry.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "fetch/archive.h"
#include "temp_dir.h"

namespace fs = std::filesystem;
using fluxtrain::Error;
using namespace fluxtrain::fetch;

namespace {

enum class Kind { file, folder, symlink, hardlink, chardev, fifo };

struct Item {
  std::string name;
  Kind kind = Kind::file;
  std::string data;       // file content
  uint64_t zeros = 0;     // or this many zero bytes
  std::string link;       // symlink/hardlink target
  int64_t declared = -1;  // the size in the header, when not the data's
};

Item make(std::string name, Kind kind, std::string data = "", std::string link = "") {
  Item item;
  item.name = std::move(name);
  item.kind = kind;
  item.data = std::move(data);
  item.link = std::move(link);
  return item;
}
Item file(std::string name, std::string data) {
  return make(std::move(name), Kind::file, std::move(data));
}
Item folder(std::string name) {
  return make(std::move(name), Kind::folder);
}
Item sym_link(std::string name, std::string target) {
  return make(std::move(name), Kind::symlink, "", std::move(target));
}
Item hard_link(std::string name, std::string target) {
  return make(std::move(name), Kind::hardlink, "", std::move(target));
}
Item zeros_file(std::string name, uint64_t zeros) {
  Item item = make(std::move(name), Kind::file);
  item.zeros = zeros;
  return item;
}

// format: "tar" or "zip"; filter: "", "gzip", "bzip2", "xz", "zstd".
void write_archive(const fs::path& path, const std::string& format, const std::string& filter,
                   const std::vector<Item>& items) {
  struct archive* a = archive_write_new();
  ASSERT_NE(a, nullptr);
  if (format == "zip") {
    ASSERT_EQ(archive_write_set_format_zip(a), ARCHIVE_OK);
  } else {
    ASSERT_EQ(archive_write_set_format_pax_restricted(a), ARCHIVE_OK);
  }
  if (filter == "gzip") {
    ASSERT_EQ(archive_write_add_filter_gzip(a), ARCHIVE_OK);
  }
  if (filter == "bzip2") {
    ASSERT_EQ(archive_write_add_filter_bzip2(a), ARCHIVE_OK);
  }
  if (filter == "xz") {
    ASSERT_EQ(archive_write_add_filter_xz(a), ARCHIVE_OK);
  }
  if (filter == "zstd") {
    ASSERT_EQ(archive_write_add_filter_zstd(a), ARCHIVE_OK);
  }
  ASSERT_EQ(archive_write_open_filename(a, path.c_str()), ARCHIVE_OK) << archive_error_string(a);
  for (const Item& item : items) {
    struct archive_entry* entry = archive_entry_new();
    archive_entry_set_pathname(entry, item.name.c_str());
    archive_entry_set_mtime(entry, 1700000000, 0);
    switch (item.kind) {
      case Kind::file: {
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_perm(entry, 0644);
        int64_t size = item.zeros > 0 ? static_cast<int64_t>(item.zeros) : static_cast<int64_t>(item.data.size());
        archive_entry_set_size(entry, item.declared >= 0 ? item.declared : size);
        break;
      }
      case Kind::folder:
        archive_entry_set_filetype(entry, AE_IFDIR);
        archive_entry_set_perm(entry, 0755);
        break;
      case Kind::symlink:
        archive_entry_set_filetype(entry, AE_IFLNK);
        archive_entry_set_perm(entry, 0777);
        archive_entry_set_symlink(entry, item.link.c_str());
        break;
      case Kind::hardlink:
        archive_entry_set_filetype(entry, AE_IFREG);
        archive_entry_set_perm(entry, 0644);
        archive_entry_set_hardlink(entry, item.link.c_str());
        archive_entry_set_size(entry, 0);
        break;
      case Kind::chardev:
        archive_entry_set_filetype(entry, AE_IFCHR);
        archive_entry_set_perm(entry, 0666);
        archive_entry_set_rdev(entry, makedev(1, 3));
        break;
      case Kind::fifo:
        archive_entry_set_filetype(entry, AE_IFIFO);
        archive_entry_set_perm(entry, 0644);
        break;
    }
    ASSERT_EQ(archive_write_header(a, entry), ARCHIVE_OK) << item.name << ": " << archive_error_string(a);
    if (item.kind == Kind::file) {
      if (item.zeros > 0) {
        std::string chunk(1 << 20, '\0');
        for (uint64_t left = item.zeros; left > 0;) {
          size_t n = static_cast<size_t>(std::min<uint64_t>(left, chunk.size()));
          ASSERT_EQ(archive_write_data(a, chunk.data(), n), static_cast<la_ssize_t>(n));
          left -= n;
        }
      } else if (!item.data.empty()) {
        ASSERT_EQ(archive_write_data(a, item.data.data(), item.data.size()), static_cast<la_ssize_t>(item.data.size()));
      }
    }
    archive_entry_free(entry);
  }
  ASSERT_EQ(archive_write_close(a), ARCHIVE_OK);
  archive_write_free(a);
}

// An old-GNU sparse tar entry (typeflag 'S', what `tar --sparse` writes): `real_size` bytes of which
// only `data` at offset 0 is stored; the rest is a hole. libarchive writes no such entries, so the
// header is built here byte by byte.
std::string gnu_sparse_entry(const std::string& name, uint64_t real_size, const std::string& data) {
  std::string h(512, '\0');
  auto number = [&](size_t at, size_t width, uint64_t value) {
    if (value < (uint64_t{1} << (3 * (width - 1)))) {
      std::string digits(width - 1, '0');
      for (size_t i = width - 1; i-- > 0; value >>= 3) digits[i] = static_cast<char>('0' + (value & 7));
      h.replace(at, width - 1, digits);
    } else {  // base-256, for sizes past the octal field (GNU)
      h[at] = static_cast<char>(0x80);
      for (size_t i = width - 1; i > 0; --i, value >>= 8) h[at + i] = static_cast<char>(value & 0xff);
    }
  };
  h.replace(0, name.size(), name);
  number(100, 8, 0644);
  number(108, 8, 0);
  number(116, 8, 0);
  number(124, 12, data.size());  // the stored bytes
  number(136, 12, 1700000000);
  h[156] = 'S';
  h.replace(257, 8, std::string("ustar  \0", 8));
  number(386, 12, 0);            // sparse map: one region at offset 0 ...
  number(398, 12, data.size());  // ... of the stored bytes
  number(483, 12, real_size);    // the file's size, holes included
  h.replace(148, 8, "        ");
  unsigned sum = 0;
  for (unsigned char c : h) sum += c;
  char checksum[8];
  std::snprintf(checksum, sizeof checksum, "%06o", sum);
  h.replace(148, 7, std::string(checksum, 6) + '\0');
  std::string padded = data + std::string((512 - data.size() % 512) % 512, '\0');
  return h + padded;
}

void write_tar_blocks(const fs::path& path, const std::string& entries) {
  std::ofstream(path, std::ios::binary) << entries << std::string(1024, '\0');
}

std::string read(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string random_bytes(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  return out;
}

// Every path under `dir` (relative), sorted.
std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> out;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    out.push_back(fs::relative(entry.path(), dir).generic_string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Extraction must fail with a message holding every one of `words`, and leave `work` as it was
// (only the archive in it): no target, no temporary folder, nothing outside.
void expect_refused(const fs::path& work, const fs::path& archive, const std::vector<std::string>& words,
                    const ArchiveLimits& limits = {}) {
  fs::remove_all(work / "out");
  const auto before = listing(work);
  try {
    extract_archive(archive, work / "out" / "dataset", limits, "test-archive");
    FAIL() << "extraction of " << archive << " did not fail";
  } catch (const Error& e) {
    std::string message = e.what();
    EXPECT_NE(message.find("test-archive"), std::string::npos) << message;
    for (const std::string& word : words)
      EXPECT_NE(message.find(word), std::string::npos) << word << " in: " << message;
  }
  EXPECT_FALSE(fs::exists(work / "out" / "dataset"));
  auto after = listing(work);
  after.erase(std::remove(after.begin(), after.end(), "out"), after.end());  // the target's parent, created
  EXPECT_EQ(after, before) << "extraction left files behind";
}

class ArchiveTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // The archive lives in work/; the target is work/out/dataset, so anything that climbs one or two
    // levels from the target lands in work/ where the checks look.
    work_ = fluxtrain::testing::fresh_dir(std::string("archive_") +
                                          ::testing::UnitTest::GetInstance()->current_test_info()->name());
  }
  void TearDown() override { fs::remove_all(work_); }
  fs::path work_;
};

}  // namespace

TEST(ArchivePaths, Normalisation) {
  std::string why;
  EXPECT_EQ(normalize_relative_path("a/b/c.png", &why), "a/b/c.png");
  EXPECT_TRUE(why.empty());
  EXPECT_EQ(normalize_relative_path("./a//b/./c/", &why), "a/b/c");
  EXPECT_EQ(normalize_relative_path("./", &why), "");
  EXPECT_TRUE(why.empty());
  // Names and paths no file system takes (a fuzzer's find: the extraction threw ENAMETOOLONG).
  EXPECT_EQ(normalize_relative_path("a/" + std::string(256, 'x'), &why), "");
  EXPECT_EQ(why, "a path with a name of 256 bytes (at most 255)");
  EXPECT_EQ(normalize_relative_path("a/" + std::string(255, 'x'), &why), "a/" + std::string(255, 'x'));
  std::string deep;
  for (int i = 0; i < 40; ++i) deep += std::string(100, 'd') + "/";
  EXPECT_EQ(normalize_relative_path(deep + "f", &why), "");
  EXPECT_EQ(why.rfind("a path of ", 0), 0u) << why;
  EXPECT_EQ(normalize_relative_path("a..b/..c", &why), "a..b/..c");
  EXPECT_TRUE(why.empty());
  for (const char* bad : {"../evil", "a/../../evil", "a/..", "/etc/passwd", "\\server\\share", "C:/Windows", "c:evil",
                          "a\\..\\..\\evil"}) {
    EXPECT_EQ(normalize_relative_path(bad, &why), "") << bad;
    EXPECT_FALSE(why.empty()) << bad;
  }
}

TEST(ArchivePaths, Extensions) {
  for (const char* name : {"a.zip", "a.TAR", "a.tar.gz", "a.tgz", "a.tar.zst", "a.tzst", "a.tar.bz2", "a.tar.xz"}) {
    EXPECT_TRUE(has_archive_extension(name)) << name;
  }
  for (const char* name : {"a.png", "a.gz", "a.parquet", "zip", "a.zst"})
    EXPECT_FALSE(has_archive_extension(name)) << name;
}

TEST_F(ArchiveTest, ExtractsEveryFormatWithNestedFolders) {
  const std::string big = random_bytes(300000, 1);
  const std::vector<Item> items = {folder("set"),
                                   folder("set/img"),
                                   file("set/img/a.png", big),
                                   file("set/a.txt", "a cat"),
                                   folder("set/empty"),
                                   file("set/img/deep/b.txt", "")};
  for (const auto& [format, filter] : std::vector<std::pair<std::string, std::string>>{
           {"tar", ""}, {"tar", "gzip"}, {"tar", "zstd"}, {"tar", "bzip2"}, {"tar", "xz"}, {"zip", ""}}) {
    SCOPED_TRACE(format + "+" + filter);
    fs::path archive = work_ / ("a." + format + filter);
    write_archive(archive, format, filter, items);
    EXPECT_TRUE(is_archive(archive));
    fs::path target = work_ / ("out-" + format + filter) / "dataset";
    ExtractStats stats = extract_archive(archive, target);
    EXPECT_EQ(stats.files, 3u);
    EXPECT_EQ(stats.bytes, big.size() + 5);
    EXPECT_EQ(read(target / "set/img/a.png"), big);
    EXPECT_EQ(read(target / "set/a.txt"), "a cat");
    EXPECT_TRUE(fs::is_directory(target / "set/empty"));
    EXPECT_EQ(fs::file_size(target / "set/img/deep/b.txt"), 0u);
    EXPECT_EQ(fs::status(target / "set/a.txt").permissions() & fs::perms::all,
              fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
    // No temporary folder stays beside the target.
    EXPECT_EQ(listing(target.parent_path()).front(), "dataset");
    EXPECT_EQ(std::distance(fs::directory_iterator(target.parent_path()), fs::directory_iterator()), 1);
  }
}

TEST_F(ArchiveTest, IsArchiveByContent) {
  std::ofstream(work_ / "text.tar") << "just some text, not a tar archive at all\n";
  EXPECT_FALSE(is_archive(work_ / "text.tar"));
  std::ofstream(work_ / "empty");
  EXPECT_FALSE(is_archive(work_ / "empty"));
  EXPECT_FALSE(is_archive(work_ / "missing"));
  write_archive(work_ / "x.bin", "tar", "gzip", {file("a", "b")});
  EXPECT_TRUE(is_archive(work_ / "x.bin"));
  expect_refused(work_, work_ / "text.tar", {"cannot read archive"});
}

TEST_F(ArchiveTest, RefusesPathTraversal) {
  for (const std::string format : {"zip", "tar"}) {
    SCOPED_TRACE(format);
    fs::path archive = work_ / ("slip." + format);
    write_archive(archive, format, "",
                  {file("ok.txt", "fine"), file("../evil", "pwned"), file("../../evil2", "pwned")});
    expect_refused(work_, archive, {"'../evil'", "'..'"});
    EXPECT_FALSE(fs::exists(work_ / "out" / "evil"));
    EXPECT_FALSE(fs::exists(work_ / "evil"));
    fs::remove(archive);
  }
}

TEST_F(ArchiveTest, RefusesAbsolutePaths) {
  fs::path outside = work_ / "absolute-target";
  fs::path archive = work_ / "abs.tar";
  write_archive(archive, "tar", "gzip", {file(outside.string(), "pwned")});
  expect_refused(work_, archive, {"absolute path", outside.string()});
  EXPECT_FALSE(fs::exists(outside));
}

TEST_F(ArchiveTest, RefusesSymlinksThatEscape) {
  for (const std::string target : {"../../outside", "/etc", "a/../../..", "../../../dataset2"}) {
    SCOPED_TRACE(target);
    fs::path archive = work_ / "link.tar";
    write_archive(archive, "tar", "", {folder("a"), sym_link("a/link", target), file("a/link/evil", "pwned")});
    expect_refused(work_, archive, {"symbolic link", "'a/link'", target});
    fs::remove(archive);
  }
  fs::path archive = work_ / "link.zip";
  write_archive(archive, "zip", "", {sym_link("up", ".."), file("up/evil", "pwned")});
  expect_refused(work_, archive, {"symbolic link", "'up'"});
  EXPECT_FALSE(fs::exists(work_ / "out" / "evil"));
}

TEST_F(ArchiveTest, SkipsSymlinksInsideAndNeverCreatesThem) {
  fs::path archive = work_ / "inner.tar";
  write_archive(archive, "tar", "gzip",
                {folder("set"), file("set/a.txt", "x"), sym_link("set/b.txt", "a.txt"), sym_link("set/sub", ".")});
  ExtractStats stats = extract_archive(archive, work_ / "out" / "dataset");
  EXPECT_EQ(stats.files, 1u);
  EXPECT_EQ(stats.skipped, 2u);
  EXPECT_FALSE(fs::exists(fs::symlink_status(work_ / "out/dataset/set/b.txt")));
  EXPECT_FALSE(fs::exists(fs::symlink_status(work_ / "out/dataset/set/sub")));
}

TEST_F(ArchiveTest, HardLinks) {
  fs::path archive = work_ / "hard.tar";
  write_archive(archive, "tar", "", {file("a.txt", "same"), hard_link("b.txt", "a.txt")});
  extract_archive(archive, work_ / "out" / "dataset");
  EXPECT_EQ(read(work_ / "out/dataset/b.txt"), "same");
  fs::remove_all(work_ / "out");

  write_archive(archive, "tar", "", {file("a.txt", "x"), hard_link("b.txt", "../../outside.txt")});
  expect_refused(work_, archive, {"hard link", "'b.txt'", "../../outside.txt"});
  write_archive(archive, "tar", "", {hard_link("b.txt", "a.txt"), file("a.txt", "x")});
  expect_refused(work_, archive, {"hard link", "not a file extracted before it"});
  write_archive(archive, "tar", "", {hard_link("b.txt", "/etc/passwd")});
  expect_refused(work_, archive, {"hard link", "/etc/passwd"});
}

TEST_F(ArchiveTest, RefusesDevicesAndFifos) {
  fs::path archive = work_ / "dev.tar";
  write_archive(archive, "tar", "", {file("a", "x"), make("null", Kind::chardev)});
  expect_refused(work_, archive, {"character device", "'null'"});
  write_archive(archive, "tar", "", {make("pipe", Kind::fifo)});
  expect_refused(work_, archive, {"FIFO", "'pipe'"});
}

TEST_F(ArchiveTest, RefusesCompressionBombsByRatio) {
  ArchiveLimits limits;
  limits.ratio_allowance_bytes = 1 << 20;
  for (const auto& [format, filter] :
       std::vector<std::pair<std::string, std::string>>{{"tar", "gzip"}, {"tar", "zstd"}, {"zip", ""}}) {
    SCOPED_TRACE(format + filter);
    fs::path archive = work_ / ("bomb." + format + filter);
    write_archive(archive, format, filter, {file("small.txt", "ok"), zeros_file("zeros.bin", 24u << 20)});
    ASSERT_LT(fs::file_size(archive), 1u << 20);
    expect_refused(work_, archive, {"'zeros.bin'", "expands more than 200:1", "FLUXTRAIN_ARCHIVE_MAX_RATIO"}, limits);
    // The same archive is fine with the ratio check loosened.
    ArchiveLimits loose = limits;
    loose.max_ratio = 1e9;
    EXPECT_EQ(extract_archive(archive, work_ / "loose" / "dataset", loose).bytes, (24u << 20) + 2);
    fs::remove_all(work_ / "loose");
    fs::remove(archive);
  }
}

TEST_F(ArchiveTest, RefusesMoreThanTheTotalLimit) {
  ArchiveLimits limits;
  limits.max_total_bytes = 500000;
  fs::path archive = work_ / "big.tar.gz";
  // Incompressible data: the ratio check cannot fire, the total does.
  write_archive(archive, "tar", "gzip",
                {file("a.bin", random_bytes(300000, 2)), file("b.bin", random_bytes(300000, 3))});
  expect_refused(work_, archive, {"'b.bin'", "limit on the uncompressed total", "FLUXTRAIN_ARCHIVE_MAX_BYTES"}, limits);
  // An entry that declares more than the limit fails before a byte is written.
  Item huge = file("huge.bin", "x");
  huge.declared = 600000;
  write_archive(archive, "tar", "gzip", {huge});
  expect_refused(work_, archive, {"'huge.bin'", "declares", "limit on the uncompressed total"}, limits);
}

// A sparse entry counts with its declared size, holes included: a tiny tar declaring terabytes (a
// "sparse tar bomb") is refused with a short error naming the entry, before any size is given to a file.
TEST_F(ArchiveTest, RefusesSparseTarBombs) {
  const std::string data(512, 'x');
  fs::path archive = work_ / "sparse.tar";
  // Declared far past the total limit: refused at its header.
  write_tar_blocks(archive, gnu_sparse_entry("tera.bin", uint64_t{1} << 40, data));
  ASSERT_LT(fs::file_size(archive), 4096u);
  expect_refused(work_, archive, {"'tera.bin'", "declares 1.1 TB", "limit on the uncompressed total"});
  // Under the total limit but all holes: refused by the ratio, the file never grows to 4 GiB.
  write_tar_blocks(archive, gnu_sparse_entry("bomb.bin", uint64_t{4} << 30, data));
  expect_refused(work_, archive,
                 {"'bomb.bin'", "declares 4.3 GB but holds 512 B of data (a sparse file", "sparse-file bomb"});
  try {
    extract_archive(archive, work_ / "out" / "short", {}, "test-archive");
  } catch (const Error& e) {
    EXPECT_LT(std::string(e.what()).size(), 500u) << e.what();
  }
  // With the ratio check off, each entry's declared size still counts against the total.
  ArchiveLimits limits;
  limits.max_ratio = 1e15;
  limits.max_total_bytes = uint64_t{1} << 30;
  write_tar_blocks(archive, gnu_sparse_entry("a.bin", 600u << 20, data) + gnu_sparse_entry("b.bin", 600u << 20, data));
  expect_refused(work_, archive, {"'b.bin'", "declares", "limit on the uncompressed total"}, limits);
  // A modest sparse file is extracted at its full size.
  write_tar_blocks(archive, gnu_sparse_entry("ok.bin", 4096, data));
  ExtractStats stats = extract_archive(archive, work_ / "ok" / "dataset");
  EXPECT_EQ(stats.bytes, 4096u);
  EXPECT_EQ(read(work_ / "ok" / "dataset" / "ok.bin"), data + std::string(4096 - 512, '\0'));
}

TEST_F(ArchiveTest, RefusesTooManyEntries) {
  ArchiveLimits limits;
  limits.max_entries = 5;
  std::vector<Item> items;
  for (int i = 0; i < 6; ++i) items.push_back(file("f" + std::to_string(i), "x"));
  fs::path archive = work_ / "many.zip";
  write_archive(archive, "zip", "", items);
  expect_refused(work_, archive, {"more than 5 entries", "FLUXTRAIN_ARCHIVE_MAX_ENTRIES"}, limits);
  items.pop_back();
  write_archive(archive, "zip", "", items);
  EXPECT_EQ(extract_archive(archive, work_ / "ok", limits).files, 5u);
}

TEST_F(ArchiveTest, TruncatedArchiveLeavesNothing) {
  fs::path archive = work_ / "cut.tar.gz";
  write_archive(archive, "tar", "gzip",
                {file("a.bin", random_bytes(200000, 5)), file("b.bin", random_bytes(200000, 6))});
  fs::resize_file(archive, fs::file_size(archive) / 2);
  expect_refused(work_, archive, {"cannot read"});
}

TEST_F(ArchiveTest, ExistingTargetAndFileFolderClashes) {
  fs::path archive = work_ / "a.tar";
  write_archive(archive, "tar", "", {file("a", "x")});
  fs::create_directories(work_ / "exists");
  EXPECT_THROW(extract_archive(archive, work_ / "exists"), Error);
  write_archive(archive, "tar", "", {file("a", "x"), file("a/b", "y")});
  expect_refused(work_, archive, {"'a/b'", "both a file and a folder"});
  write_archive(archive, "tar", "", {folder("a"), file("a", "y")});
  expect_refused(work_, archive, {"'a'", "earlier entry made a folder"});
}

TEST_F(ArchiveTest, SkipsMacResourceForksAndReplacesDuplicates) {
  fs::path archive = work_ / "mac.zip";
  write_archive(archive, "zip", "",
                {file("set/a.png", "first"), file("__MACOSX/set/._a.png", "fork"), file("set/a.png", "second")});
  ExtractStats stats = extract_archive(archive, work_ / "out" / "dataset");
  EXPECT_EQ(stats.skipped, 1u);
  EXPECT_EQ(listing(work_ / "out" / "dataset"), (std::vector<std::string>{"set", "set/a.png"}));
  EXPECT_EQ(read(work_ / "out/dataset/set/a.png"), "second");
}
