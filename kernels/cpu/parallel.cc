#include "parallel.h"

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace mfgf {
namespace {

int threads_from_environment() {
  if (const char* text = std::getenv("MINDFORMER_GF_NUM_THREADS")) {
    int requested = std::atoi(text);
    if (requested > 0) return requested;
  }
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) {
    int count = CPU_COUNT(&allowed);
    if (count > 0) return count;
  }
  unsigned hardware = std::thread::hardware_concurrency();
  return hardware > 0 ? static_cast<int>(hardware) : 1;
}

class ThreadPool {
 public:
  explicit ThreadPool(int threads) : threads_(threads), owner_(getpid()) {
    for (int worker = 1; worker < threads_; ++worker) {
      workers_.emplace_back([this] { worker_loop(); });
    }
  }

  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  int threads() const { return threads_; }

  void run(int64_t count, const std::function<void(int64_t)>& task) {
    if (count <= 0) return;
    std::unique_lock<std::mutex> launch(launch_mutex_, std::try_to_lock);
    // A forked child (e.g. a data-loader worker) inherits the pool but none of its threads.
    if (threads_ == 1 || count == 1 || !launch.owns_lock() || getpid() != owner_) {
      for (int64_t index = 0; index < count; ++index) task(index);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      task_ = &task;
      count_ = count;
      next_.store(0);
      busy_workers_ = static_cast<int>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    drain();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_workers_ == 0; });
    task_ = nullptr;
  }

 private:
  void drain() {
    for (int64_t index = next_.fetch_add(1); index < count_; index = next_.fetch_add(1)) (*task_)(index);
  }

  void worker_loop() {
    uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
      }
      drain();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--busy_workers_ == 0) done_.notify_one();
      }
    }
  }

  const int threads_;
  const pid_t owner_;
  std::vector<std::thread> workers_;
  std::mutex launch_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  bool stopping_ = false;
  uint64_t generation_ = 0;
  int busy_workers_ = 0;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t count_ = 0;
  std::atomic<int64_t> next_{0};
};

ThreadPool& pool() {
  // Leaked on purpose: joining threads from a static destructor at interpreter exit can deadlock.
  static ThreadPool* instance = new ThreadPool(threads_from_environment());
  return *instance;
}

}  // namespace

int num_threads() { return pool().threads(); }

void parallel_for(int64_t count, const std::function<void(int64_t)>& task) { pool().run(count, task); }

}  // namespace mfgf
