// Data-parallel collectives on PyTorch's own c10d engine (TCPStore for rendezvous,
// ProcessGroupGloo for CPU tensors, ProcessGroupNCCL for CUDA tensors when built with
// GENLAB_NCCL), as torch.distributed uses them. tch binds none of c10d.
//
// Every entry point catches every exception and writes its message into the caller's
// buffer (`err`, `err_len` bytes, NUL-terminated), so a peer's failure ("Connection closed
// by peer", a timeout) reaches Rust as text instead of unwinding across the FFI boundary.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef GENLAB_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> gloo;
  c10::intrusive_ptr<c10d::Backend> nccl;  // null unless built with NCCL and asked for
  std::chrono::milliseconds timeout;
};

void write_err(char* err, size_t err_len, const std::string& msg) {
  if (err == nullptr || err_len == 0) return;
  size_t n = msg.size() < err_len - 1 ? msg.size() : err_len - 1;
  std::memcpy(err, msg.data(), n);
  err[n] = '\0';
}

// c10 exceptions carry a C++ backtrace after the first line; the first line is the message.
std::string first_lines(const char* what) {
  std::string s(what);
  auto pos = s.find("\nException raised from");
  if (pos != std::string::npos) s.resize(pos);
  return s;
}

template <typename F>
int guarded(char* err, size_t err_len, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    write_err(err, err_len, first_lines(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    write_err(err, err_len, first_lines(e.what()));
  } catch (...) {
    write_err(err, err_len, "unknown C++ exception");
  }
  return -1;
}

c10d::Backend& backend_for(Group* g, const at::Tensor& t) {
  if (t.is_cuda()) {
    if (!g->nccl) {
      throw std::runtime_error(
          "a CUDA tensor reached a process group without NCCL (genlab was built without NCCL, or "
          "the group was created for CPU training)");
    }
    return *g->nccl;
  }
  return *g->gloo;
}

void wait(c10::intrusive_ptr<c10d::Work> work, std::chrono::milliseconds timeout) {
  if (!work->wait(timeout)) throw std::runtime_error("collective did not complete");
}

}  // namespace

extern "C" {

int genlab_dist_has_nccl() {
#ifdef GENLAB_NCCL
  return 1;
#else
  return 0;
#endif
}

// Rendezvous through a TCPStore at addr:port and create the process groups.
// store_is_server: this process serves the store (rank 0, unless an agent such as
// torchrun's already does). Returns an opaque handle, or null with `err` filled.
void* genlab_dist_init(const char* addr, int port, int rank, int world_size, int store_is_server,
                       long long timeout_ms, const char* prefix, int use_nccl, char* err, size_t err_len) {
  Group* out = nullptr;
  int rc = guarded(err, err_len, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = store_is_server != 0;
    opts.numWorkers = world_size;
    opts.waitWorkers = false;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(addr), opts);
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);

    auto gopts = c10d::ProcessGroupGloo::Options::create(timeout);
    const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
    std::string host(addr);
    if (ifname != nullptr && *ifname != '\0') {
      gopts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
    } else if (host == "127.0.0.1" || host == "localhost" || host == "::1") {
      // A single-machine run stays on loopback whatever the hostname resolves to.
      gopts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(host));
    } else {
      gopts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto gloo_store = c10::make_intrusive<c10d::PrefixStore>("gloo", store);
    auto g = new Group();
    g->store = store;
    g->timeout = timeout;
    try {
      g->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(gloo_store, rank, world_size, gopts);
      if (use_nccl) {
#ifdef GENLAB_NCCL
        auto nopts = c10d::ProcessGroupNCCL::Options::create();
        nopts->timeout = timeout;
        auto nccl_store = c10::make_intrusive<c10d::PrefixStore>("nccl", store);
        g->nccl = c10::make_intrusive<c10d::ProcessGroupNCCL>(nccl_store, rank, world_size, nopts);
#else
        throw std::runtime_error("NCCL was requested but genlab was built without NCCL (Gloo only)");
#endif
      }
    } catch (...) {
      delete g;
      throw;
    }
    out = g;
  });
  return rc == 0 ? out : nullptr;
}

// op: 0 = sum, 1 = max, 2 = min. In place on `t` (contiguous).
int genlab_dist_all_reduce(void* h, at::Tensor* t, int op, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(h);
    c10d::AllreduceOptions o;
    o.reduceOp = op == 1 ? c10d::ReduceOp::MAX : op == 2 ? c10d::ReduceOp::MIN : c10d::ReduceOp::SUM;
    o.timeout = g->timeout;
    std::vector<at::Tensor> ts{*t};
    wait(backend_for(g, *t).allreduce(ts, o), g->timeout);
  });
}

int genlab_dist_broadcast(void* h, at::Tensor* t, int root, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(h);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = g->timeout;
    std::vector<at::Tensor> ts{*t};
    wait(backend_for(g, *t).broadcast(ts, o), g->timeout);
  });
}

int genlab_dist_barrier(void* h, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(h);
    c10d::BarrierOptions o;
    o.timeout = g->timeout;
    wait(g->gloo->barrier(o), g->timeout);
  });
}

// Tear the groups down (after a barrier when the run ended normally) and free the handle.
int genlab_dist_destroy(void* h, char* err, size_t err_len) {
  auto g = static_cast<Group*>(h);
  int rc = guarded(err, err_len, [&] {
    if (g->nccl) g->nccl->shutdown();
    g->gloo->shutdown();
  });
  guarded(nullptr, 0, [&] { delete g; });
  return rc;
}

}
