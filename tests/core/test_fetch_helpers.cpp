// The pure parts of dataset fetching (src/fetch/http.h, dataset.h): URL origins, Link headers, URL
// encoding, DATASET_NAME parsing. The network paths are tested end to end in tests/e2e/test_fetch.py.
#include <gtest/gtest.h>

#include <cstdlib>

#include "core/error.h"
#include "fetch/dataset.h"
#include "fetch/http.h"
#include "temp_dir.h"

using namespace fluxtrain::fetch;
using fluxtrain::Error;

// Credentials are bound to scheme, host and port: a downgrade to http or another port is another origin.
TEST(FetchHelpers, UrlOrigin) {
  EXPECT_EQ(url_origin("https://HuggingFace.co/api/x?y=1"), "https://huggingface.co:443");
  EXPECT_EQ(url_origin("http://huggingface.co/api"), "http://huggingface.co:80");
  EXPECT_EQ(url_origin("http://u:pw@127.0.0.1:8080/set.tar"), "http://127.0.0.1:8080");
  EXPECT_NE(url_origin("https://host/a"), url_origin("http://host/a"));
  EXPECT_NE(url_origin("http://127.0.0.1:1/a"), url_origin("http://127.0.0.1:2/a"));
  EXPECT_EQ(url_origin("not a url"), "");
}

TEST(FetchHelpers, LinkNext) {
  EXPECT_EQ(link_next("<https://hf.co/api/datasets/a/b/tree/main?cursor=abc>; rel=\"next\""),
            "https://hf.co/api/datasets/a/b/tree/main?cursor=abc");
  EXPECT_EQ(link_next("<https://x/1>; rel=\"prev\", <https://x/3>; rel=\"next\""), "https://x/3");
  EXPECT_EQ(link_next("<https://x/3>; rel=next; title=\"a,b\""), "https://x/3");
  EXPECT_EQ(link_next("<https://x/3>; rel=\"next last\""), "https://x/3");
  EXPECT_EQ(link_next("<https://x/3>; REL=\"Next\""), "https://x/3");
  EXPECT_EQ(link_next("<https://x/1>; rel=\"prev\""), "");
  EXPECT_EQ(link_next("<https://x/nextpage>; rel=\"last\""), "");
  EXPECT_EQ(link_next(""), "");
  EXPECT_EQ(link_next("garbage <unterminated"), "");
}

TEST(FetchHelpers, UrlEncode) {
  EXPECT_EQ(url_encode("refs/pr/1", false), "refs%2Fpr%2F1");
  EXPECT_EQ(url_encode("images/a b+c.png", true), "images/a%20b%2Bc.png");
  EXPECT_EQ(url_encode("Aa0-._~", false), "Aa0-._~");
  EXPECT_EQ(url_encode("\xc3\xa9", true), "%C3%A9");
}

TEST(FetchHelpers, ParseDatasetSource) {
  // A bare owner/name: Kaggle (DATASET_HOST), then the Hub.
  auto bare = parse_dataset_source("black-forest-labs/some.set_1");
  EXPECT_EQ(bare.kind, DatasetSourceKind::any);
  EXPECT_EQ(bare.repo, "black-forest-labs/some.set_1");
  EXPECT_EQ(parse_dataset_source("hf:a/b").kind, DatasetSourceKind::hub);
  auto kaggle = parse_dataset_source("kaggle:owner/name");
  EXPECT_EQ(kaggle.kind, DatasetSourceKind::kaggle);
  EXPECT_EQ(kaggle.repo, "owner/name");
  EXPECT_EQ(parse_dataset_source("https://x.example/a.zip").kind, DatasetSourceKind::url);
  EXPECT_EQ(parse_dataset_source("HTTP://x.example/a.zip").kind, DatasetSourceKind::url);
  EXPECT_EQ(parse_dataset_source("/data/set").kind, DatasetSourceKind::local);
  EXPECT_EQ(parse_dataset_source("./set").kind, DatasetSourceKind::local);
  EXPECT_EQ(parse_dataset_source("a/b/c").kind, DatasetSourceKind::local);
  // An existing folder named like a repository is the folder.
  auto dir = fluxtrain::testing::fresh_dir("parse_source");
  std::filesystem::create_directories(dir / "owner" / "name");
  auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir);
  EXPECT_EQ(parse_dataset_source("owner/name").kind, DatasetSourceKind::local);
  std::filesystem::current_path(cwd);
  std::filesystem::remove_all(dir);
  for (const char* bad : {"", "kaggle:nameonly", "kaggle:a/b/c", "hf:a/", "ftp://host/x", "s3://bucket/x"}) {
    EXPECT_THROW(parse_dataset_source(bad), Error) << bad;
  }
}

TEST(FetchHelpers, LocalFolderIsReturnedAsItIs) {
  auto dir = fluxtrain::testing::fresh_dir("local_fetch");
  std::filesystem::create_directories(dir / "set");
  EXPECT_EQ(fetch_dataset((dir / "set").string(), dir / "cache", FetchOptions{}), dir / "set");
  EXPECT_FALSE(std::filesystem::exists(dir / "cache"));
  EXPECT_THROW(fetch_dataset((dir / "missing").string(), dir / "cache", FetchOptions{}), Error);
  FetchOptions with_revision;
  with_revision.revision = "v1";
  EXPECT_THROW(fetch_dataset((dir / "set").string(), dir / "cache", with_revision), Error);
  std::filesystem::remove_all(dir);
}
