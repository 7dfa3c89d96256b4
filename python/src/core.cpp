// Devices, streams, dtypes, backends and their memory statistics.
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <fmt/format.h>

#include <cstdint>
#include <string>

#include "bindings.hpp"
#include "micache/backend/backend.hpp"
#include "micache/device.hpp"
#include "micache/dtype.hpp"
#include "micache/error.hpp"
#include "micache/memory_stats.hpp"
#include "micache/owned_stream.hpp"
#include "micache/registry.hpp"
#include "micache/stream.hpp"

namespace micache::python {
namespace {

// "cpu", "cuda" or "cuda:N", as torch.device spells them.
Device parse_device(const std::string& name) {
  if (name == "cpu") {
    return Device::cpu();
  }
  if (name == "cuda") {
    return Device::cuda(0);
  }
  if (name.starts_with("cuda:") && name.size() > 5 && name.find_first_not_of("0123456789", 5) == std::string::npos) {
    return Device::cuda(std::stoi(name.substr(5)));
  }
  throw Error(ErrorCode::Config, fmt::format("device '{}' is not cpu, cuda or cuda:N", name));
}

std::string stream_repr(Stream stream) {
  return stream.handle == nullptr ? "micache.Stream()"
                                  : fmt::format("micache.Stream({:#x})", reinterpret_cast<std::uintptr_t>(stream.handle));
}

}  // namespace

void bind_core(nb::module_& m) {
  nb::enum_<DType>(m, "DType", MICACHE_DOC_TYPE(DType))
      .value("F32", DType::F32)
      .value("F16", DType::F16)
      .value("BF16", DType::BF16)
      .value("I32", DType::I32)
      .value("U8", DType::U8)
      .value("I64", DType::I64)
      .def_prop_ro("itemsize", [](DType dtype) { return dtype_size(dtype); }, "Bytes per element.")
      .def("__str__", [](DType dtype) { return std::string(dtype_name(dtype)); });

  nb::enum_<DeviceKind>(m, "DeviceKind", "The kind of a Device: the host or a CUDA GPU.")
      .value("Cpu", DeviceKind::Cpu)
      .value("Cuda", DeviceKind::Cuda);

  nb::class_<Device>(m, "Device", MICACHE_DOC_TYPE(Device))
      .def(nb::init<>(), "The CPU.")
      .def(
          "__init__", [](Device* self, const std::string& name) { new (self) Device(parse_device(name)); },
          nb::arg("name"), "The device `name` names: 'cpu', 'cuda' (device 0) or 'cuda:N'.")
      .def_static("cpu", &Device::cpu)
      .def_static("cuda", &Device::cuda, nb::arg("index") = 0)
      .def_static("best", &Device::best, MICACHE_DOC(Device, best))
      .def_prop_ro("kind", [](const Device& device) { return device.kind; })
      .def_prop_ro("index", [](const Device& device) { return device.index; })
      .def_prop_ro("is_cpu", &Device::is_cpu)
      .def_prop_ro("is_cuda", &Device::is_cuda)
      .def("__str__", &Device::to_string, MICACHE_DOC(Device, to_string))
      .def("__repr__", [](const Device& device) { return fmt::format("micache.Device('{}')", device.to_string()); })
      .def("__eq__", [](const Device& a, const Device& b) { return a == b; }, nb::is_operator())
      .def("__hash__", [](const Device& device) { return std::hash<std::string>{}(device.to_string()); });

  nb::class_<Stream>(m, "Stream", MICACHE_DOC_TYPE(Stream))
      .def(
          "__init__", [](Stream* self, std::uintptr_t handle) { new (self) Stream{reinterpret_cast<void*>(handle)}; },
          nb::arg("handle") = 0,
          "The stream with this handle: 0 (the default) is the device's default stream; on CUDA any other\n"
          "value is a cudaStream_t, such as torch.cuda.Stream().cuda_stream.")
      .def(
          "__init__", [](Stream* self, const OwnedStream& owned) { new (self) Stream(owned.get()); },
          nb::arg("owned"), "The stream `owned` holds (an OwnedStream passes wherever a Stream does).")
      .def_prop_ro(
          "handle", [](Stream stream) { return reinterpret_cast<std::uintptr_t>(stream.handle); },
          "The handle as an integer (0 for the default stream).")
      .def("__eq__", [](Stream a, Stream b) { return a == b; }, nb::is_operator())
      .def("__hash__", [](Stream stream) { return std::hash<void*>{}(stream.handle); })
      .def("__repr__", &stream_repr);

  nb::class_<OwnedStream>(m, "OwnedStream", MICACHE_DOC_TYPE(OwnedStream))
      .def(nb::init<Device>(), nb::arg("device") = Device::cpu(), MICACHE_DOC_INIT(OwnedStream))
      .def("get", &OwnedStream::get, MICACHE_DOC(OwnedStream, get))
      .def_prop_ro("device", &OwnedStream::device)
      .def("synchronize", &OwnedStream::synchronize, nb::call_guard<nb::gil_scoped_release>(),
           MICACHE_DOC(OwnedStream, synchronize))
      .def("reset", &OwnedStream::reset, MICACHE_DOC(OwnedStream, reset))
      .def("__enter__", [](OwnedStream& self) -> OwnedStream& { return self; }, nb::rv_policy::reference)
      .def(
          "__exit__", [](OwnedStream& self, nb::handle, nb::handle, nb::handle) { self.reset(); },
          nb::arg("exc_type").none(), nb::arg("exc_value").none(), nb::arg("traceback").none(),
          "Destroys the stream (reset()): leave the block only after every cache and tensor on it is gone.")
      .def("__repr__", [](const OwnedStream& owned) {
        return fmt::format("micache.OwnedStream(device={}, stream={})", owned.device().to_string(),
                           stream_repr(owned.get()));
      });
  nb::implicitly_convertible<OwnedStream, Stream>();

  nb::class_<MemoryStats>(m, "MemoryStats", MICACHE_DOC_TYPE(MemoryStats))
      .def_ro("in_use", &MemoryStats::in_use, MICACHE_DOC(MemoryStats, in_use))
      .def_ro("reserved", &MemoryStats::reserved, MICACHE_DOC(MemoryStats, reserved))
      .def_ro("peak", &MemoryStats::peak, MICACHE_DOC(MemoryStats, peak))
      .def_ro("trims", &MemoryStats::trims, MICACHE_DOC(MemoryStats, trims))
      .def("__repr__", [](const MemoryStats& stats) {
        return fmt::format("micache.MemoryStats(in_use={}, reserved={}, peak={}, trims={})", stats.in_use,
                           stats.reserved, stats.peak, stats.trims);
      });

  nb::class_<Backend>(m, "Backend", MICACHE_DOC_TYPE(Backend))
      .def_prop_ro("device", &Backend::device)
      .def_prop_ro("name", [](const Backend& backend) { return std::string(backend.name()); })
      .def_prop_ro("description", &Backend::description, MICACHE_DOC(Backend, description))
      .def("memory_stats", &Backend::memory_stats, MICACHE_DOC(Backend, memory_stats))
      .def("reset_peak", &Backend::reset_peak, MICACHE_DOC(Backend, reset_peak))
      .def("fail_allocation_after", &Backend::fail_allocation_after, nb::arg("n"),
           MICACHE_DOC(Backend, fail_allocation_after))
      .def("release_unused_memory", &Backend::release_unused_memory, nb::arg("stream") = Stream{},
           nb::call_guard<nb::gil_scoped_release>(), MICACHE_DOC(Backend, release_unused_memory))
      .def("synchronize", &Backend::synchronize, nb::arg("stream") = Stream{},
           nb::call_guard<nb::gil_scoped_release>(), MICACHE_DOC(Backend, synchronize))
      .def_prop_ro("deferred_errors", &Backend::deferred_errors, MICACHE_DOC(Backend, deferred_errors))
      .def("__repr__", [](const Backend& backend) {
        return fmt::format("micache.Backend(name='{}', device={})", backend.name(), backend.device().to_string());
      });

  m.def("backend_for", &backend_for, nb::arg("device") = Device::cpu(), nb::rv_policy::reference,
        MICACHE_DOC_FN(backend_for));
  m.def(
      "memory_stats", [](Device device) { return backend_for(device).memory_stats(); },
      nb::arg("device") = Device::cpu(), "backend_for(device).memory_stats(): the device's byte counters.");
  m.def("available_devices", &available_devices, MICACHE_DOC_FN(available_devices));
  m.def("cuda_built", &cuda_built, MICACHE_DOC_FN(cuda_built));
  m.def("cuda_unavailable_reason", &cuda_unavailable_reason, MICACHE_DOC_FN(cuda_unavailable_reason));
}

}  // namespace micache::python
