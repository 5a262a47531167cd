// Writing to a Hugging Face Hub model repository (torch-free): the token's owner, creating the repository,
// and one commit of files through the Hub's HTTP commit API, as the huggingface_hub client does it:
//
//   POST {hf}/api/models/{repo}/preupload/{rev}      which files go by LFS ("lfs") and which in git ("regular")
//   POST {hf}/{repo}.git/info/lfs/objects/batch      per LFS object (sha256, size): nothing to do (the Hub has
//                                                    it) or an upload action, basic (one PUT) or multipart
//                                                    (a PUT per chunk_size part, then POST of the parts' ETags),
//                                                    and an optional verify action (POST oid + size)
//   POST {hf}/api/models/{repo}/commit/{rev}         NDJSON: a header line, then "file" (base64 content),
//                                                    "lfsFile" (path, sha256 oid, size) and "deletedFolder"
//
// A commit is atomic on the Hub: a reader sees all of its files or none. It is resumable: every attempt
// asks the batch endpoint again, and objects the Hub already holds (uploaded by an attempt whose
// connection dropped before the commit) are not sent again.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "fetch/options.h"

namespace fluxtrain::fetch {

// What is wrong with a Hub repository id ("owner/name": letters, digits, '-', '_', '.'; no "--" or "..";
// at most 96 characters of name), "" when nothing.
std::string hub_repo_id_problem(const std::string& repo);

struct HubUser {
  std::string name;
  std::string role;  // the token's: "write", "read", "fineGrained", or "" when the Hub does not say
};

// GET {hf}/api/whoami-v2 with HF_TOKEN. Throws Error (a refused token names HF_TOKEN and the fix).
HubUser hub_whoami(const FetchOptions& options);

// POST {hf}/api/repos/create for a model repository; one that exists already is fine (409). Throws Error
// (401/403 naming HF_TOKEN: a read-only token, or another user's namespace).
void hub_create_repo(const std::string& repo, bool private_repo, const FetchOptions& options);

struct HubUploadFile {
  std::string path;             // in the repository, '/'-separated
  std::filesystem::path local;  // the file, or (when empty)
  std::string content;          // the content itself
};

struct HubCommit {
  std::string repo;
  std::string revision = "main";
  std::string summary;
  std::vector<HubUploadFile> files;
  std::vector<std::string> deleted_folders;  // removed in the same commit
};

struct HubCommitResult {
  std::string commit_url;
  int lfs_uploaded = 0;  // LFS objects sent by this call
  int lfs_present = 0;   // LFS objects the Hub already had
  uint64_t bytes_sent = 0;
};

// Uploads and commits. Throws Error naming the file or request that failed.
HubCommitResult hub_commit(const HubCommit& commit, const FetchOptions& options);

}  // namespace fluxtrain::fetch
