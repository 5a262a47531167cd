// src/dist on c10d's Gloo backend: two ranks as two threads of this process, meeting through a TCPStore on
// 127.0.0.1. The bucketed gradient all-reduce sums the gradients of every trained tensor over the ranks —
// launched from the autograd hooks of the last micro-batch's backward, or at the end for a rank without
// rows — and the small exchanges (sum, broadcast, text) give every rank the same answer. A rank that leaves
// makes the other's next collective an Error naming its rank and the phase.
#include <gtest/gtest.h>

#include <ATen/ATen.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "core/error.h"
#include "dist/process_group.h"

namespace fluxtrain::dist {
namespace {

int free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(addr);
  bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &length);
  close(fd);
  return ntohs(addr.sin_port);
}

// Runs body(rank, group) on two ranks at once; rethrows the first failure.
void two_ranks(const std::function<void(int, train::Parallel&)>& body, size_t bucket_bytes = 64,
               double timeout = 30) {
  const int port = free_port();
  std::exception_ptr failures[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      try {
        RankInfo info;
        info.rank = r;
        info.world_size = 2;
        info.local_rank = r;
        info.local_world_size = 2;
        info.master_port = port;
        GroupOptions options;
        options.timeout_seconds = timeout;
        options.bucket_bytes = bucket_bytes;
        auto group = join_group(info, options);
        body(r, *group);
      } catch (...) {
        failures[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (auto& f : failures)
    if (f) std::rethrow_exception(f);
}

struct Model {
  std::vector<at::Tensor> params;
  explicit Model(uint64_t seed) {
    auto g = at::detail::createCPUGenerator(seed);
    for (auto shape : {std::vector<int64_t>{4, 3}, {5}, {40}}) params.push_back(at::randn(shape, g).requires_grad_(true));
  }
};

// The inputs of rank r's micro-batch m: each tensor's gradient of sum(p * x) is x.
std::vector<at::Tensor> inputs(int rank, int micro) {
  auto g = at::detail::createCPUGenerator(100 + 10 * rank + micro);
  return {at::randn({4, 3}, g), at::randn({5}, g), at::randn({40}, g)};
}

void backward(const Model& m, const std::vector<at::Tensor>& x) {
  at::Tensor loss = at::zeros({});
  for (size_t i = 0; i < x.size(); ++i) loss = loss + (m.params[i] * x[i]).sum();
  loss.backward();
}

void gradients_are_summed(size_t bucket_bytes) {
  two_ranks([](int rank, train::Parallel& group) {
    Model m(7);  // the same weights on both ranks
    group.attach(m.params);
    for (int step = 0; step < 2; ++step) {  // the buckets are reset between steps
      group.before_last_backward();
      backward(m, inputs(rank, step));
      group.finish_gradients();
      // 64-byte buckets: one per tensor, each launched by its hook during the backward pass.
      EXPECT_EQ(group.buckets_overlapped(), (std::pair<size_t, size_t>{3, 3}));
      for (size_t i = 0; i < m.params.size(); ++i) {
        const at::Tensor expected = inputs(0, step)[i] + inputs(1, step)[i];
        EXPECT_TRUE(at::allclose(m.params[i].grad(), expected, 1e-6, 1e-6)) << "rank " << rank << " tensor " << i;
      }
      for (auto& p : m.params) p.mutable_grad().zero_();
    }
  }, bucket_bytes);
}

TEST(Dist, GradientsAreSummedOverTheRanksInBuckets) { gradients_are_summed(64); }

// 16-byte buckets: at most 64 bytes in flight, so the hooks wait for older buckets and write them back
// while the backward pass goes on.
TEST(Dist, GradientsAreSummedWithFewBucketsInFlight) { gradients_are_summed(16); }

TEST(Dist, AccumulatedMicroBatchesAndARankWithoutRows) {
  two_ranks([](int rank, train::Parallel& group) {
    Model m(7);
    group.attach(m.params);
    // Rank 0: two micro-batches, hooks armed for the last one. Rank 1: no rows at all (no backward).
    if (rank == 0) backward(m, inputs(0, 0));
    group.before_last_backward();
    if (rank == 0) backward(m, inputs(0, 1));
    group.finish_gradients();
    EXPECT_EQ(group.buckets_overlapped().first, rank == 0 ? 3u : 0u);
    for (size_t i = 0; i < m.params.size(); ++i) {
      const at::Tensor expected = inputs(0, 0)[i] + inputs(0, 1)[i];
      ASSERT_TRUE(m.params[i].grad().defined());
      EXPECT_TRUE(at::allclose(m.params[i].grad(), expected, 1e-6, 1e-6)) << "rank " << rank << " tensor " << i;
    }
  });
}

TEST(Dist, SmallExchangesGiveEveryRankTheSameAnswer) {
  two_ranks([](int rank, train::Parallel& group) {
    EXPECT_EQ(group.rank(), rank);
    EXPECT_EQ(group.world_size(), 2);
    const auto sums = group.sum({1.0 + rank, 0.5}, "a test sum");
    EXPECT_DOUBLE_EQ(sums[0], 3.0);
    EXPECT_DOUBLE_EQ(sums[1], 1.0);
    std::vector<at::Tensor> t = {at::full({3}, static_cast<double>(rank + 5)), at::full({2, 2}, rank * 1.0).t()};
    group.broadcast(t, "a test broadcast");
    EXPECT_TRUE(at::equal(t[0], at::full({3}, 5.0)));
    EXPECT_TRUE(at::equal(t[1], at::zeros({2, 2})));  // a non-contiguous tensor too
    EXPECT_EQ(group.broadcast_text(rank == 0 ? "from zero" : "ignored", "a test text"), "from zero");
    EXPECT_EQ(group.gather_text("rank " + std::to_string(rank), "a test gather"),
              (std::vector<std::string>{"rank 0", "rank 1"}));
    group.barrier("a test barrier");
  });
}

TEST(Dist, ARankThatLeavesIsANamedErrorForTheOther) {
  try {
    two_ranks(
        [](int rank, train::Parallel& group) {
          group.barrier("the start");
          if (rank == 1) return;  // leaves: its group closes its connections
          std::this_thread::sleep_for(std::chrono::milliseconds(200));
          group.sum({1.0}, "the test's all-reduce");
        },
        64, 5);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 0 of 2: the test's all-reduce failed"), std::string::npos) << what;
    EXPECT_NE(what.find("collective_timeout_seconds, 5 s"), std::string::npos) << what;
  }
}

}  // namespace
}  // namespace fluxtrain::dist
