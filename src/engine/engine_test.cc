#include "engine/engine.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <thread>

#include "core/base/secret_buffer.h"
#include "engine/engine_internal.h"
#include "engine/protected_heap.h"

namespace custody::engine {
namespace {

const std::string kPluginDir = CUSTODY_TEST_PLUGIN_DIR;
const std::string kBadPluginDir = CUSTODY_TEST_BAD_PLUGIN_DIR;

// A model for the example "linear" plugin (format in linear_plugin.cc).
Bytes LinearModel(uint32_t rows, uint32_t cols, const std::vector<float>& w,
                  const std::vector<float>& b) {
  Bytes out = {'C', 'U', 'S', 'T', 'L', 'I', 'N', '1'};
  auto put32 = [&out](uint32_t v) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  };
  put32(rows);
  put32(cols);
  for (float f : w) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    put32(bits);
  }
  for (float f : b) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    put32(bits);
  }
  return out;
}

// W = [[1,2,3],[4,5,6]], b = [0.5,-1]
Bytes SmallLinearModel() { return LinearModel(2, 3, {1, 2, 3, 4, 5, 6}, {0.5f, -1.0f}); }

LoadOptions PluginOptions() {
  LoadOptions o;
  o.plugin_dirs = {kPluginDir};
  return o;
}

Tensor Floats(std::string name, std::vector<int64_t> shape, std::vector<float> v) {
  return Tensor::FromFloats(std::move(name), std::move(shape), v).value();
}

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// ---- dtypes, shapes, tensors ---------------------------------------------------------------

TEST(DTypeTest, SizesAndNamesRoundTrip) {
  for (DType d : {DType::kFloat32, DType::kFloat64, DType::kFloat16, DType::kInt64, DType::kInt32,
                  DType::kInt8, DType::kUInt8, DType::kBool}) {
    EXPECT_GT(DTypeSize(d), 0u);
    Result<DType> parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.has_value()) << DTypeName(d);
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeSize(DType::kFloat16), 2u);
  EXPECT_EQ(DTypeSize(DType::kInt64), 8u);
  EXPECT_EQ(ParseDType("complex64").error().code(), StatusCode::kInvalidArgument);
}

TEST(ShapeTest, ScalarHasOneElementAndZeroDimsHaveNone) {
  EXPECT_EQ(*ElementCount(std::vector<int64_t>{}), 1u);
  EXPECT_EQ(*ElementCount(std::vector<int64_t>{2, 0, 5}), 0u);
  EXPECT_EQ(*ElementCount(std::vector<int64_t>{1, 3, 224, 224}), 150528u);
}

TEST(ShapeTest, NegativeDimensionIsInvalid) {
  Result<size_t> r = ElementCount(std::vector<int64_t>{1, -1, 3});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.error().message(), "negative"));
}

TEST(ShapeTest, OverflowIsOutOfRangeNotWrapped) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  EXPECT_EQ(ElementCount(std::vector<int64_t>{big, big}).error().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(ElementCount(std::vector<int64_t>{1 << 20, 1 << 20, 1 << 20, 1 << 20}).error().code(),
            StatusCode::kOutOfRange);
  // A zero after the overflow point makes the product zero: not an overflow.
  EXPECT_EQ(*ElementCount(std::vector<int64_t>{big, big, 0}), 0u);
  // The element count fits, the byte count does not.
  int64_t quarter = static_cast<int64_t>(std::numeric_limits<size_t>::max() / 4 + 1);
  EXPECT_EQ(ByteSize(DType::kFloat64, std::vector<int64_t>{quarter}).error().code(),
            StatusCode::kOutOfRange);
}

TEST(TensorTest, ValidateComparesDataSizeWithShape) {
  Tensor t = Floats("x", {2, 2}, {1, 2, 3, 4});
  EXPECT_TRUE(t.Validate().ok());
  t.data.pop_back();
  Status s = t.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "needs 16 bytes, but has 15")) << s.message();
  EXPECT_FALSE(Tensor::FromFloats("x", {3}, std::vector<float>{1, 2}).has_value());
}

TEST(TensorTest, ToFloatsChecksDType) {
  Tensor t = Floats("x", {2}, {1.5f, -2});
  EXPECT_EQ(*t.ToFloats(), (std::vector<float>{1.5f, -2}));
  t.dtype = DType::kInt32;
  EXPECT_FALSE(t.ToFloats().has_value());
}

// ---- input validation ----------------------------------------------------------------------

std::vector<TensorSpec> ImageSpec() {
  return {TensorSpec{"input", DType::kFloat32, std::vector<int64_t>{-1, 3, 4, 4}}};
}

TEST(ValidateInputsTest, AcceptsMatchingInputWithDynamicBatch) {
  Tensor in = Floats("input", {2, 3, 4, 4}, std::vector<float>(96, 0.f));
  EXPECT_TRUE(ValidateInputs(ImageSpec(), std::span(&in, 1)).ok());
}

TEST(ValidateInputsTest, RejectsWrongInputCount) {
  Status s = ValidateInputs(ImageSpec(), {});
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "takes 1 input (input: float32[-1,3,4,4]), got 0"))
      << s.message();
}

TEST(ValidateInputsTest, RejectsWrongDType) {
  Tensor in;
  in.name = "input";
  in.dtype = DType::kFloat64;
  in.shape = {1, 3, 4, 4};
  in.data.resize(48 * 8);
  Status s = ValidateInputs(ImageSpec(), std::span(&in, 1));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "is float64 but the model expects float32")) << s.message();
}

TEST(ValidateInputsTest, RejectsWrongRankAndWrongStaticDimension) {
  Tensor rank3 = Floats("input", {3, 4, 4}, std::vector<float>(48, 0.f));
  Status s = ValidateInputs(ImageSpec(), std::span(&rank3, 1));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "has shape [3,4,4] but the model expects [-1,3,4,4]"))
      << s.message();
  Tensor wrong_dim = Floats("input", {1, 3, 4, 5}, std::vector<float>(60, 0.f));
  EXPECT_EQ(ValidateInputs(ImageSpec(), std::span(&wrong_dim, 1)).code(),
            StatusCode::kInvalidArgument);
}

TEST(ValidateInputsTest, RejectsDataSizeThatDoesNotMatchShape) {
  Tensor in = Floats("input", {1, 3, 4, 4}, std::vector<float>(48, 0.f));
  in.data.resize(in.data.size() + 1);
  Status s = ValidateInputs(ImageSpec(), std::span(&in, 1));
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "input 0 ('input')")) << s.message();
  // Also without any spec: data sizes are always checked.
  EXPECT_EQ(ValidateInputs({}, std::span(&in, 1)).code(), StatusCode::kInvalidArgument);
}

TEST(ValidateInputsTest, RejectsAnInvalidDTypeValue) {
  Tensor in = Floats("input", {1}, {1});
  in.dtype = static_cast<DType>(99);
  EXPECT_EQ(ValidateInputs({}, std::span(&in, 1)).code(), StatusCode::kInvalidArgument);
}

TEST(ValidateInputsTest, ChecksNamesOnlyForMultiInputModels) {
  std::vector<TensorSpec> two = {TensorSpec{"a", DType::kFloat32, std::nullopt},
                                 TensorSpec{"b", DType::kFloat32, std::nullopt}};
  std::vector<Tensor> swapped = {Floats("b", {1}, {1}), Floats("a", {1}, {2})};
  Status s = ValidateInputs(two, swapped);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "model's order")) << s.message();
  // A single-input model accepts any name (callers often do not know TorchScript's).
  Tensor any = Floats("whatever", {2, 3, 4, 4}, std::vector<float>(96, 0.f));
  EXPECT_TRUE(ValidateInputs(ImageSpec(), std::span(&any, 1)).ok());
}

TEST(ReconcileSchemaTest, DeclarationMustAgreeWithTheModel) {
  std::vector<TensorSpec> known = {TensorSpec{"x", std::nullopt, std::nullopt}};
  std::optional<std::vector<TensorSpec>> declared =
      std::vector<TensorSpec>{TensorSpec{"", DType::kFloat32, std::vector<int64_t>{1, 8}}};
  Result<std::vector<TensorSpec>> merged = internal::ReconcileSchema("input", known, declared);
  ASSERT_TRUE(merged.has_value()) << merged.error().ToString();
  EXPECT_EQ((*merged)[0].ToString(), "x: float32[1,8]");

  declared->push_back(TensorSpec{"y", std::nullopt, std::nullopt});
  EXPECT_EQ(internal::ReconcileSchema("input", known, declared).error().code(),
            StatusCode::kInvalidArgument);

  std::vector<TensorSpec> typed = {TensorSpec{"x", DType::kInt64, std::vector<int64_t>{-1, 8}}};
  std::optional<std::vector<TensorSpec>> conflicting =
      std::vector<TensorSpec>{TensorSpec{"x", DType::kFloat32, std::nullopt}};
  EXPECT_EQ(internal::ReconcileSchema("input", typed, conflicting).error().code(),
            StatusCode::kInvalidArgument);
  std::optional<std::vector<TensorSpec>> bad_dim =
      std::vector<TensorSpec>{TensorSpec{"x", std::nullopt, std::vector<int64_t>{2, 9}}};
  EXPECT_EQ(internal::ReconcileSchema("input", typed, bad_dim).error().code(),
            StatusCode::kInvalidArgument);
}

// ---- LoadEngine argument checks --------------------------------------------------------------

TEST(LoadEngineTest, RejectsInvalidKindNames) {
  Bytes model = SmallLinearModel();
  for (const char* kind : {"", "Linear", "../linear", "lin/ear", "linear.so", "a b",
                           "abcdefghijklmnopqrstuvwxyz0123456"}) {
    Result<std::unique_ptr<Engine>> r = LoadEngine(kind, model, PluginOptions());
    ASSERT_FALSE(r.has_value()) << kind;
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument) << kind;
  }
  EXPECT_TRUE(IsValidEngineKind("onnx_runtime-2"));
}

TEST(LoadEngineTest, RejectsAnEmptyModel) {
  Result<std::unique_ptr<Engine>> r = LoadEngine("linear", {}, PluginOptions());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
}

TEST(LoadEngineTest, RejectsNegativeThreads) {
  LoadOptions o = PluginOptions();
  o.threads = -1;
  EXPECT_EQ(LoadEngine("linear", SmallLinearModel(), o).error().code(),
            StatusCode::kInvalidArgument);
}

TEST(LoadEngineTest, UnknownKindWithoutPluginDirsIsNotFound) {
  Result<std::unique_ptr<Engine>> r = LoadEngine("tensorrt", SmallLinearModel(), LoadOptions{});
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(r.error().message(), "no plugin directories")) << r.error().message();
}

TEST(LoadEngineTest, MissingPluginListsEveryPlaceItLooked) {
  LoadOptions o;
  o.plugin_dirs = {"/nonexistent/custody-a", kPluginDir};
  Result<std::unique_ptr<Engine>> r = LoadEngine("tensorrt", SmallLinearModel(), o);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kNotFound);
  EXPECT_TRUE(Contains(r.error().message(), "/nonexistent/custody-a/libcustody-engine-tensorrt.so"))
      << r.error().message();
  EXPECT_TRUE(Contains(r.error().message(), kPluginDir + "/libcustody-engine-tensorrt.so"))
      << r.error().message();
}

TEST(LoadEngineTest, RelativePluginDirIsRejected) {
  LoadOptions o;
  o.plugin_dirs = {"engines"};
  Result<std::unique_ptr<Engine>> r = LoadEngine("linear", SmallLinearModel(), o);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.error().message(), "not an absolute path"));
}

TEST(LoadEngineTest, BuiltinKindsRejectBytesTheyCannotParse) {
  Bytes garbage(4096);
  for (size_t i = 0; i < garbage.size(); ++i) garbage[i] = static_cast<uint8_t>(i * 131 + 7);
  Bytes fake_zip = garbage;
  fake_zip[0] = 'P';
  fake_zip[1] = 'K';
  fake_zip[2] = 3;
  fake_zip[3] = 4;
  for (const char* kind : {"torchscript", "onnx"}) {
    for (const Bytes* bytes : {&garbage, &fake_zip}) {
      Result<std::unique_ptr<Engine>> r = LoadEngine(kind, *bytes, LoadOptions{});
      ASSERT_FALSE(r.has_value()) << kind;
      std::vector<std::string> builtin = BuiltinEngineKinds();
      bool compiled = std::find(builtin.begin(), builtin.end(), kind) != builtin.end();
      EXPECT_EQ(r.error().code(),
                compiled ? StatusCode::kInvalidArgument : StatusCode::kUnimplemented)
          << kind << ": " << r.error().ToString();
      EXPECT_FALSE(r.error().message().empty());
    }
  }
}

// ---- the example plugin through LoadEngine -------------------------------------------------

TEST(LinearPluginTest, DescribesItsInputsAndOutputs) {
  Result<std::unique_ptr<Engine>> engine =
      LoadEngine("linear", SmallLinearModel(), PluginOptions());
  ASSERT_TRUE(engine.has_value()) << engine.error().ToString();
  EXPECT_EQ((*engine)->kind(), "linear");
  ASSERT_EQ((*engine)->inputs().size(), 1u);
  EXPECT_EQ((*engine)->inputs()[0].ToString(), "x: float32[-1,3]");
  ASSERT_EQ((*engine)->outputs().size(), 1u);
  EXPECT_EQ((*engine)->outputs()[0].ToString(), "y: float32[-1,2]");
}

TEST(LinearPluginTest, ComputesWxPlusBForABatch) {
  Result<std::unique_ptr<Engine>> engine =
      LoadEngine("linear", SmallLinearModel(), PluginOptions());
  ASSERT_TRUE(engine.has_value()) << engine.error().ToString();
  Tensor x = Floats("x", {2, 3}, {1, 0, -1, 0.5f, 2, 4});
  Result<std::vector<Tensor>> y = (*engine)->Run(std::span(&x, 1));
  ASSERT_TRUE(y.has_value()) << y.error().ToString();
  ASSERT_EQ(y->size(), 1u);
  EXPECT_EQ((*y)[0].name, "y");
  EXPECT_EQ((*y)[0].shape, (std::vector<int64_t>{2, 2}));
  // Row 0: [1*1 + 2*0 + 3*-1 + 0.5, 4*1 + 5*0 + 6*-1 - 1] = [-1.5, -3]
  // Row 1: [0.5 + 4 + 12 + 0.5, 2 + 10 + 24 - 1] = [17, 35]
  EXPECT_EQ(*(*y)[0].ToFloats(), (std::vector<float>{-1.5f, -3.f, 17.f, 35.f}));
}

TEST(LinearPluginTest, LoadsFromASecretBufferLikeTheSealedFileOpener) {
  Bytes model = SmallLinearModel();
  Result<SecretBuffer> secret = SecretBuffer::CopyFrom(model);
  ASSERT_TRUE(secret.has_value());
  size_t live_before = ProtectedHeap::Global().stats().live_bytes;
  Result<std::unique_ptr<Engine>> engine = LoadEngine("linear", secret->span(), PluginOptions());
  ASSERT_TRUE(engine.has_value()) << engine.error().ToString();
  // The bytes need not outlive LoadEngine.
  secret->Wipe();
  *secret = SecretBuffer();
  // The weights (8 floats) now live in the protected heap, through the host callbacks.
  EXPECT_GE(ProtectedHeap::Global().stats().live_bytes, live_before + 8 * sizeof(float));
  Tensor x = Floats("x", {1, 3}, {1, 1, 1});
  Result<std::vector<Tensor>> y = (*engine)->Run(std::span(&x, 1));
  ASSERT_TRUE(y.has_value()) << y.error().ToString();
  EXPECT_EQ(*(*y)[0].ToFloats(), (std::vector<float>{6.5f, 14.f}));
  EngineProtection p = (*engine)->Protection();
  EXPECT_TRUE(Contains(p.report, "W and b are kept only in host protected memory")) << p.report;
  EXPECT_EQ(p.weights_covered, p.memory.full());
  engine->reset();
  EXPECT_EQ(ProtectedHeap::Global().stats().live_bytes, live_before);
}

TEST(LinearPluginTest, HostRejectsInputsThatDoNotMatchTheDescription) {
  Result<std::unique_ptr<Engine>> engine =
      LoadEngine("linear", SmallLinearModel(), PluginOptions());
  ASSERT_TRUE(engine.has_value());
  Tensor wrong_cols = Floats("x", {1, 4}, {1, 2, 3, 4});
  Result<std::vector<Tensor>> r = (*engine)->Run(std::span(&wrong_cols, 1));
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.error().message(), "expects [-1,3]")) << r.error().message();
  Tensor as_int = Floats("x", {1, 3}, {1, 2, 3});
  as_int.dtype = DType::kInt32;
  EXPECT_EQ((*engine)->Run(std::span(&as_int, 1)).error().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*engine)->Run({}).error().code(), StatusCode::kInvalidArgument);
}

TEST(LinearPluginTest, MalformedModelsGiveThePluginsMessage) {
  Bytes model = SmallLinearModel();
  Bytes truncated(model.begin(), model.end() - 1);
  Bytes trailing = model;
  trailing.push_back(0);
  Bytes bad_magic = model;
  bad_magic[0] = 'X';
  Bytes huge = LinearModel(70000, 1, {}, {});
  for (const Bytes* m : {&truncated, &trailing, &bad_magic, &huge}) {
    Result<std::unique_ptr<Engine>> r = LoadEngine("linear", *m, PluginOptions());
    ASSERT_FALSE(r.has_value());
    EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(r.error().message(), "engine 'linear' cannot load the model: linear:"))
        << r.error().message();
  }
  // Truncation at every length is an error, never a crash.
  for (size_t n = 1; n < model.size(); ++n) {
    EXPECT_FALSE(LoadEngine("linear", ByteSpan(model.data(), n), PluginOptions()).has_value());
  }
}

TEST(LinearPluginTest, DeclaredSchemaMustMatchThePlugin) {
  LoadOptions o = PluginOptions();
  o.input_schema =
      std::vector<TensorSpec>{TensorSpec{"x", DType::kFloat32, std::vector<int64_t>{-1, 4}}};
  Result<std::unique_ptr<Engine>> r = LoadEngine("linear", SmallLinearModel(), o);
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  o.input_schema =
      std::vector<TensorSpec>{TensorSpec{"x", DType::kFloat32, std::vector<int64_t>{1, 3}}};
  Result<std::unique_ptr<Engine>> ok = LoadEngine("linear", SmallLinearModel(), o);
  ASSERT_TRUE(ok.has_value()) << ok.error().ToString();
  EXPECT_EQ((*ok)->inputs()[0].ToString(), "x: float32[1,3]");
  Tensor batch2 = Floats("x", {2, 3}, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ((*ok)->Run(std::span(&batch2, 1)).error().code(), StatusCode::kInvalidArgument);
}

TEST(LinearPluginTest, ConcurrentRunsAgree) {
  Result<std::unique_ptr<Engine>> engine =
      LoadEngine("linear", SmallLinearModel(), PluginOptions());
  ASSERT_TRUE(engine.has_value());
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        float v = static_cast<float>(t * 1000 + i);
        Tensor x = Floats("x", {1, 3}, {v, 0, 0});
        Result<std::vector<Tensor>> y = (*engine)->Run(std::span(&x, 1));
        if (!y.has_value() || *(*y)[0].ToFloats() != std::vector<float>{v + 0.5f, 4 * v - 1}) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// ---- plugins that break the rules ------------------------------------------------------------

LoadOptions BadPluginOptions() {
  LoadOptions o;
  o.plugin_dirs = {kBadPluginDir};
  return o;
}

TEST(PluginLoaderTest, WrongAbiVersionIsRejected) {
  Result<std::unique_ptr<Engine>> r = LoadEngine("badabi", AsBytes("x"), BadPluginOptions());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(r.error().message(),
                       "declares plugin ABI version 99; this host supports "
                       "version 1"))
      << r.error().message();
}

TEST(PluginLoaderTest, MissingEntryPointIsRejectedWithAHint) {
  Result<std::unique_ptr<Engine>> r = LoadEngine("future", AsBytes("x"), BadPluginOptions());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(r.error().message(), "does not export custody_engine_plugin_v1_get"))
      << r.error().message();
  EXPECT_TRUE(Contains(r.error().message(), "built for plugin ABI v2")) << r.error().message();
}

TEST(PluginLoaderTest, PluginMustDeclareTheKindOfItsFileName) {
  Result<std::unique_ptr<Engine>> r = LoadEngine("wrongkind", AsBytes("x"), BadPluginOptions());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Contains(r.error().message(), "declares kind 'other', not 'wrongkind'"))
      << r.error().message();
}

TEST(PluginLoaderTest, CreateErrorsCarryThePluginsMessage) {
  Result<std::unique_ptr<Engine>> r =
      LoadEngine("chaos", AsBytes("create-error"), BadPluginOptions());
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(r.error().message(), "refused on purpose")) << r.error().message();
  Result<std::unique_ptr<Engine>> null =
      LoadEngine("chaos", AsBytes("create-null"), BadPluginOptions());
  ASSERT_FALSE(null.has_value());
  EXPECT_EQ(null.error().code(), StatusCode::kInternal);
}

TEST(PluginLoaderTest, RunErrorsAndMalformedOutputsAreReportedNotTrusted) {
  struct Case {
    const char* mode;
    StatusCode code;
    const char* text;
  };
  const Case cases[] = {
      {"run-error", StatusCode::kUnimplemented, "run refused on purpose"},
      {"run-weird-code", StatusCode::kInternal, "unknown plugin status code 77"},
      {"bad-output-size", StatusCode::kInternal, "with 3 bytes of data"},
      {"bad-output-dtype", StatusCode::kInternal, "unknown plugin dtype code 42"},
      {"bad-output-rank", StatusCode::kInternal, "invalid rank 1000"},
      {"null-output-data", StatusCode::kInternal, "output 0"},
  };
  Tensor x = Floats("x", {1}, {1});
  for (const Case& c : cases) {
    Result<std::unique_ptr<Engine>> engine =
        LoadEngine("chaos", AsBytes(c.mode), BadPluginOptions());
    ASSERT_TRUE(engine.has_value()) << c.mode << ": " << engine.error().ToString();
    Result<std::vector<Tensor>> r = (*engine)->Run(std::span(&x, 1));
    ASSERT_FALSE(r.has_value()) << c.mode;
    EXPECT_EQ(r.error().code(), c.code) << c.mode << ": " << r.error().ToString();
    EXPECT_TRUE(Contains(r.error().message(), c.text)) << c.mode << ": " << r.error().message();
  }
  Result<std::unique_ptr<Engine>> ok = LoadEngine("chaos", AsBytes("ok"), BadPluginOptions());
  ASSERT_TRUE(ok.has_value());
  Result<std::vector<Tensor>> out = (*ok)->Run(std::span(&x, 1));
  ASSERT_TRUE(out.has_value()) << out.error().ToString();
  EXPECT_EQ((*out)[0].shape, (std::vector<int64_t>{4}));
  // No describe_protection: the report says so and does not claim coverage.
  EXPECT_FALSE((*ok)->Protection().weights_covered);
  EXPECT_TRUE(Contains((*ok)->Protection().report, "does not describe"));
}

}  // namespace
}  // namespace custody::engine
