// micache::Error to Python: ErrorCode, and a translator that raises the
// class of micache.errors named for the code (HookError for Hook, ...).
#include <string>

#include "bindings.hpp"
#include "micache/error.hpp"

namespace micache::python {

void bind_errors(nb::module_& m) {
  nb::enum_<ErrorCode>(m, "ErrorCode", MICACHE_DOC_TYPE(ErrorCode))
      .value("Hook", ErrorCode::Hook, MICACHE_DOC(ErrorCode, Hook))
      .value("Shape", ErrorCode::Shape, MICACHE_DOC(ErrorCode, Shape))
      .value("DimensionMismatch", ErrorCode::DimensionMismatch, MICACHE_DOC(ErrorCode, DimensionMismatch))
      .value("NonFiniteInput", ErrorCode::NonFiniteInput, MICACHE_DOC(ErrorCode, NonFiniteInput))
      .value("EmptyInput", ErrorCode::EmptyInput, MICACHE_DOC(ErrorCode, EmptyInput))
      .value("ZeroDimension", ErrorCode::ZeroDimension, MICACHE_DOC(ErrorCode, ZeroDimension))
      .value("OddDimension", ErrorCode::OddDimension, MICACHE_DOC(ErrorCode, OddDimension))
      .value("InvalidBitWidth", ErrorCode::InvalidBitWidth, MICACHE_DOC(ErrorCode, InvalidBitWidth))
      .value("ZeroProjections", ErrorCode::ZeroProjections, MICACHE_DOC(ErrorCode, ZeroProjections))
      .value("DimensionTooLarge", ErrorCode::DimensionTooLarge, MICACHE_DOC(ErrorCode, DimensionTooLarge))
      .value("Config", ErrorCode::Config, MICACHE_DOC(ErrorCode, Config))
      .value("OutOfMemory", ErrorCode::OutOfMemory, MICACHE_DOC(ErrorCode, OutOfMemory))
      .value("Backend", ErrorCode::Backend, MICACHE_DOC(ErrorCode, Backend))
      .value("Io", ErrorCode::Io, MICACHE_DOC(ErrorCode, Io));

  // micache.errors imports this module, so its classes are looked up when an
  // error is raised, not now.
  nb::register_exception_translator([](const std::exception_ptr& thrown, void*) {
    try {
      std::rethrow_exception(thrown);
    } catch (const Error& error) {
      try {
        const std::string name = std::string(to_string(error.code())) + "Error";
        const nb::object cls = nb::module_::import_("micache.errors").attr(name.c_str());
        PyErr_SetString(cls.ptr(), error.what());
      } catch (nb::python_error& lookup_failed) {
        lookup_failed.restore();
      }
    }
  });
}

}  // namespace micache::python
