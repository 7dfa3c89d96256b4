// Tensor: construction, views, copies between devices, conversion, accounting.
#include "test_support.hpp"

namespace micache::testing {
namespace {

class TensorTest : public ::testing::TestWithParam<Device> {};

TEST_P(TensorTest, FromHostRoundTripsEachFloatDtype) {
  const std::vector<float> values = random_values(37, 1, -3.0f, 3.0f);
  for (DType dtype : {DType::F32, DType::F16, DType::BF16}) {
    const Tensor t = Tensor::from_host(values, {37}, dtype, GetParam());
    EXPECT_EQ(t.dtype(), dtype);
    EXPECT_EQ(t.device(), GetParam());
    EXPECT_EQ(t.nbytes(), 37 * dtype_size(dtype));
    EXPECT_EQ(t.to_host_f32(), rounded_to(values, dtype)) << dtype_name(dtype);
  }
}

TEST_P(TensorTest, FromHostRejectsWrongValueCount) {
  expect_error([&] { Tensor::from_host(std::vector<float>(3, 0.f), {2, 2}, DType::F32, GetParam()); },
               ErrorCode::Shape, "from_host: 3 values do not fill shape [2, 2] (4 elements)");
}

TEST_P(TensorTest, FromHostRejectsIntegerDtype) {
  expect_error([&] { Tensor::from_host(std::vector<float>(1, 0.f), {1}, DType::I32, GetParam()); },
               ErrorCode::Config, "Tensor::from_host dtype must be f32, f16 or bf16, got i32");
}

TEST_P(TensorTest, DimOutOfRangeIsShapeError) {
  const Tensor t = Tensor::empty({2, 3}, DType::F32, GetParam());
  EXPECT_EQ(t.dim(1), 3u);
  expect_error([&] { (void)t.dim(2); }, ErrorCode::Shape, "dim 2 out of range (rank=2)");
}

TEST_P(TensorTest, SelectAndNarrowShareStorage) {
  const std::vector<float> values{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
  const Tensor t = Tensor::from_host(values, {3, 2, 2}, DType::F32, GetParam());
  const Tensor row = t.select(1);
  EXPECT_EQ(row.shape(), (Shape{2, 2}));
  EXPECT_TRUE(row.shares_storage_with(t));
  EXPECT_EQ(row.to_host_f32(), (std::vector<float>{4, 5, 6, 7}));
  const Tensor tail = t.narrow(1, 2);
  EXPECT_EQ(tail.shape(), (Shape{2, 2, 2}));
  EXPECT_EQ(tail.to_host_f32(), (std::vector<float>{4, 5, 6, 7, 8, 9, 10, 11}));
  expect_error([&] { (void)t.select(3); }, ErrorCode::Hook, "index 3 out of range (dim0=3)");
  expect_error([&] { (void)t.narrow(2, 2); }, ErrorCode::Hook, "rows [2, 4) out of range (dim0=3)");
}

TEST_P(TensorTest, ReshapeKeepsElementsAndRejectsOtherCounts) {
  const Tensor t = Tensor::from_host(std::vector<float>{1, 2, 3, 4, 5, 6}, {2, 3}, DType::F32, GetParam());
  EXPECT_EQ(t.reshape({3, 2}).to_host_f32(), t.to_host_f32());
  expect_error([&] { (void)t.reshape({4}); }, ErrorCode::Shape, "reshape [2, 3] to [4] changes the element count");
}

TEST_P(TensorTest, ToCopiesAcrossDevicesAndBack) {
  const std::vector<float> values = random_values(100, 2);
  const Tensor host = Tensor::from_host(values, {10, 10}, DType::BF16);
  const Tensor there = host.to(GetParam());
  EXPECT_EQ(there.device(), GetParam());
  EXPECT_FALSE(there.shares_storage_with(host));
  EXPECT_EQ(there.to(Device::cpu()).to_host_f32(), host.to_host_f32());
}

TEST_P(TensorTest, ToDtypeRoundsLikeTheHost) {
  const std::vector<float> values = random_values(1001, 3, -70000.0f, 70000.0f);
  const Tensor f32 = Tensor::from_host(values, {1001}, DType::F32, GetParam());
  EXPECT_EQ(f32.to_dtype(DType::F16).to_host_f32(), rounded_to(values, DType::F16));
  EXPECT_EQ(f32.to_dtype(DType::BF16).to_host_f32(), rounded_to(values, DType::BF16));
  EXPECT_EQ(f32.to_dtype(DType::BF16).to_dtype(DType::F32).to_host_f32(), rounded_to(values, DType::BF16));
}

TEST_P(TensorTest, I32RoundTrips) {
  const std::vector<std::int32_t> values{-5, 0, 7, 1 << 30};
  const Tensor t = Tensor::from_host_i32(values, {4}, GetParam());
  EXPECT_EQ(t.to_host_i32(), values);
  expect_error([&] { (void)Tensor::empty({1}, DType::F32, GetParam()).to_host_i32(); }, ErrorCode::Config,
               "to_host_i32 of a f32 tensor");
}

TEST_P(TensorTest, StorageIsAccountedAndReturnedWhenTheLastHandleGoes) {
  Backend& backend = backend_for(GetParam());
  const std::size_t before = backend.memory_stats().in_use;
  {
    const Tensor t = Tensor::empty({1000, 3}, DType::BF16, GetParam());
    const Tensor view = t.select(10);
    EXPECT_EQ(backend.memory_stats().in_use, before + 6000);
    EXPECT_GE(backend.memory_stats().peak, before + 6000);
    EXPECT_GE(backend.memory_stats().reserved, backend.memory_stats().in_use);
  }
  EXPECT_EQ(backend.memory_stats().in_use, before);
}

TEST_P(TensorTest, InjectedAllocationFailureThrowsOutOfMemoryOnce) {
  Backend& backend = backend_for(GetParam());
  const std::size_t before = backend.memory_stats().in_use;
  backend.fail_allocation_after(2);
  const Tensor first = Tensor::empty({8}, DType::F32, GetParam());
  try {
    (void)Tensor::empty({16}, DType::F32, GetParam());
    ADD_FAILURE() << "second allocation should fail";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::OutOfMemory);
    EXPECT_EQ(std::string(e.what()),
              "allocation of 64 bytes on " + GetParam().to_string() + " failed (injected fault)");
  }
  EXPECT_EQ(backend.memory_stats().in_use, before + 32);
  const Tensor third = Tensor::empty({4}, DType::F32, GetParam());
  EXPECT_EQ(backend.memory_stats().in_use, before + 48);
}

TEST(TensorWrap, ReleaseRunsOnceWhenTheLastHandleGoes) {
  std::vector<float> owned{1, 2, 3, 4};
  int releases = 0;
  {
    const Tensor t = Tensor::wrap(owned.data(), {2, 2}, DType::F32, Device::cpu(), [&] { ++releases; });
    const Tensor copy = t;
    EXPECT_EQ(t.data(), owned.data());
    EXPECT_EQ(copy.select(1).to_host_f32(), (std::vector<float>{3, 4}));
  }
  EXPECT_EQ(releases, 1);
}

TEST_P(TensorTest, EmptyTensorsCopyToTheHostAsEmptyVectors) {
  EXPECT_TRUE(Tensor::empty({3, 0}, DType::F32, GetParam()).to_host_f32().empty());
  EXPECT_TRUE(Tensor::empty({0}, DType::BF16, GetParam()).to_host_f32().empty());
  EXPECT_TRUE(Tensor::empty({0, 2}, DType::I32, GetParam()).to_host_i32().empty());
}

TEST(TensorUndefined, QueriesThrowConfig) {
  const Tensor t;
  EXPECT_FALSE(t.defined());
  expect_error([&] { (void)t.data(); }, ErrorCode::Config, "operation on an undefined Tensor");
}

INSTANTIATE_TEST_SUITE_P(Backends, TensorTest, ::testing::ValuesIn(test_devices()), device_param_name);

}  // namespace
}  // namespace micache::testing
