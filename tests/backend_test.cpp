// Registry and devices: the CPU always, CUDA only when built and present, clear errors otherwise.
#include "test_support.hpp"

namespace micache::testing {
namespace {

TEST(Registry, CpuBackendIsAlwaysFirst) {
  const std::vector<Device> devices = available_devices();
  ASSERT_FALSE(devices.empty());
  EXPECT_EQ(devices.front(), Device::cpu());
  EXPECT_STREQ(backend_for(Device::cpu()).name(), "cpu");
  EXPECT_EQ(&backend_for(Device::cpu()), &backend_for(Device::cpu()));
}

TEST(Registry, DeviceNames) {
  EXPECT_EQ(Device::cpu().to_string(), "cpu");
  EXPECT_EQ(Device::cuda(3).to_string(), "cuda:3");
}

TEST(Registry, BestIsCudaExactlyWhenCudaIsUsable) {
  EXPECT_EQ(Device::best().is_cuda(), cuda_unavailable_reason().empty());
}

TEST(Registry, UnavailableCudaIsABackendErrorNamingTheReason) {
  if (cuda_unavailable_reason().empty()) {
    GTEST_SKIP() << "a CUDA device is present; the unavailable path cannot be exercised";
  }
  try {
    (void)backend_for(Device::cuda(0));
    ADD_FAILURE() << "expected Error(Backend)";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Backend);
    EXPECT_NE(std::string(e.what()).find(cuda_unavailable_reason()), std::string::npos) << e.what();
  }
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device::cuda(0)), Error);
}

TEST(Registry, CpuOnlyBuildSaysHowToEnableCuda) {
  if (cuda_built()) {
    GTEST_SKIP() << "this build has the CUDA backend";
  }
  expect_error([] { (void)backend_for(Device::cuda(1)); }, ErrorCode::Backend,
               "cuda:1 requested: micache was built without CUDA (configure with -DMICACHE_ENABLE_CUDA=ON)");
}

TEST(Registry, MissingCudaDeviceIndexIsRejected) {
  MICACHE_REQUIRE_CUDA();
  const int count = static_cast<int>(available_devices().size()) - 1;
  EXPECT_THROW((void)backend_for(Device::cuda(count)), Error);
}

TEST(ErrorCodes, HaveNames) {
  EXPECT_STREQ(to_string(ErrorCode::Hook), "Hook");
  EXPECT_STREQ(to_string(ErrorCode::NonFiniteInput), "NonFiniteInput");
  EXPECT_STREQ(to_string(ErrorCode::OutOfMemory), "OutOfMemory");
}

}  // namespace
}  // namespace micache::testing
