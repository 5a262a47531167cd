// The Hugging Face Hub's dataset formats -> a plain image folder (torch-free; Arrow and Parquet C++ from the
// pyarrow wheel, docs/dependencies.md). docs/data.md "Hub dataset formats" is the user's description.
//
// A dataset folder (fetched or local) is one of:
//   parquet      *.parquet files anywhere below it: each row one image, either a column of image bytes
//                (binary) or the `datasets` Image feature (struct<bytes: binary, path: string>), and a
//                caption column
//   imagefolder  metadata.jsonl or metadata.csv files: a `file_name` column naming the image (relative to
//                the metadata file) and a caption column
//   plain        anything else: the folder is used as it is (images + caption files)
//
// Files are grouped into configs and splits as the Hub lays them out:
//   data/train-00000-of-00002.parquet    config "default", split "train" (the file name's first word)
//   <config>/train-00000-of-00001.parquet, <config>/<split>/0000.parquet   a config's folder
//   data/<split>/..., <split>/metadata.jsonl                                a split's folder
// A split is one of the words train (training), validation (valid, val, dev), test (testing, eval,
// evaluation) or the requested split's own name, found in a folder name or as a word of the file name
// (split at - _ . and spaces); a file with none is in "train".
//
// The caption column: HubFormatOptions::caption_column when set, else the first string column named (in
// any letter case) text, caption, prompt, description, alt_text or title, else the only string column
// besides the image's. The image column of a Parquet file: one named "image" of an image type, else the
// first of an image type.
//
// The rows of the chosen config and split are written ONCE as NNNNNNNN.<png|jpg|webp|bmp> + NNNNNNNN.txt
// (no .txt for a null caption) into <cache_dir>/converted/<folder name>-<12 hex>/dataset, the hex a hash
// of the folder's path, the options and every data file's path, size and time. A `complete.json` written
// last marks it whole; a folder with the marker is reused, one without is redone. Concurrent converters
// of one folder (the ranks of a multi-GPU run) take turns on a lock.
#pragma once

#include <filesystem>
#include <string>

namespace fluxtrain::data {

struct HubFormatOptions {
  std::string split = "train";     // dataset_split
  std::string config_name;         // dataset_config_name; "" = the only config
  std::string caption_column;      // caption_column; "" = the rule above
  std::filesystem::path cache_dir; // where converted datasets go
};

enum class HubLayout { plain, parquet, imagefolder };

HubLayout detect_hub_layout(const std::filesystem::path& folder);

// The folder training reads: `folder` itself when it is plain, else its converted copy (made now or
// reused). Throws Error naming the file and what to change: no image column, no caption column (listing
// the columns), a caption_column that is not there, an unreadable Parquet/JSON/CSV file, a config or split
// that is not there (listing those that are), an image that is missing or not PNG/JPEG/WebP/BMP.
std::filesystem::path prepare_hub_dataset(const std::filesystem::path& folder, const HubFormatOptions& options);

}  // namespace fluxtrain::data
