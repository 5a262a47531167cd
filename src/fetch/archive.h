// Safe extraction of downloaded dataset archives (torch-free, libarchive): zip, and tar plain or
// compressed with gzip, bzip2, xz or zstd.
//
// An archive from the network is untrusted. Extraction refuses, naming the archive and the entry:
//  - paths with a ".." component, absolute paths (also "C:..." and "\\..."), empty names;
//  - symbolic links that point outside the extraction folder (absolute, or climbing above it with
//    ".."); symbolic links that stay inside are skipped with a warning, never created, so no later
//    entry can be written through one;
//  - hard links whose target is not a regular file extracted earlier from the same archive (those
//    that are become hard links inside the folder);
//  - device files, FIFOs and sockets;
//  - decompression bombs, by the limits in ArchiveLimits: each entry counts with its declared size
//    (a sparse entry's full size, holes included) or the bytes it wrote, whichever is larger, so a
//    sparse tar entry declaring a terabyte over a few stored bytes is refused like any other bomb.
// Entries under "__MACOSX/" (resource forks that macOS adds to zips) are skipped. Files are created
// 0644 and folders 0755; owners, setuid bits and times in the archive are ignored.
//
// Everything is extracted into a fresh folder beside the target, synced, then renamed onto the target:
// a failed extraction removes that folder and leaves nothing behind.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace fluxtrain::fetch {

struct ArchiveLimits {
  // Total bytes extracted (all entries, each counted with the larger of its declared size and the
  // bytes written). A declared entry size over what is left fails before writing.
  uint64_t max_total_bytes = uint64_t{64} << 30;
  // Entries (files, folders, links) in the archive.
  uint64_t max_entries = 1'000'000;
  // Per entry: bytes written, and at its end its declared size, may not exceed max_ratio x the
  // compressed bytes read for it (plus one read block), once past ratio_allowance_bytes. Real image datasets compress
  // little; a bomb (1 GB of zeros is ~1 MB gzip'd, ~1000:1) trips this after ~16 MB.
  double max_ratio = 200;
  uint64_t ratio_allowance_bytes = uint64_t{16} << 20;
};

struct ExtractStats {
  uint64_t files = 0;
  uint64_t folders = 0;
  uint64_t bytes = 0;
  uint64_t skipped = 0;  // symbolic links inside the folder, __MACOSX entries
};

// Extracts `archive` into `target`, which must not exist (its parent is created). `name` is how
// messages call the archive (its source URL, say); empty: its path. Throws Error on any refusal above,
// on a corrupt, truncated, encrypted or unsupported archive, and on write errors.
ExtractStats extract_archive(const std::filesystem::path& archive, const std::filesystem::path& target,
                             const ArchiveLimits& limits = {}, const std::string& name = "");

// The same for an archive held in memory (the fuzzer's input); `name` names it in messages.
ExtractStats extract_archive_bytes(std::string_view bytes, const std::filesystem::path& target,
                                   const ArchiveLimits& limits, const std::string& name);

// Whether the file's content is an archive extract_archive() reads (zip, or tar plain or compressed).
bool is_archive(const std::filesystem::path& file);

// Whether the file name ends like an archive: .zip .tar .tar.gz .tgz .tar.bz2 .tbz2 .tar.xz .txz
// .tar.zst .tzst (any case).
bool has_archive_extension(std::string_view name);

// A path from an archive or a listing, normalised ("./a//b/" -> "a/b"), or "" with *why set when it is
// unsafe (absolute, "..", a drive letter). "." and "" normalise to "" with *why empty.
std::string normalize_relative_path(std::string_view path, std::string* why);

}  // namespace fluxtrain::fetch
