#include "agent/kserve.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "tests/support/must.h"

namespace custody::agent::kserve {
namespace {

using engine::DType;
using engine::Tensor;
using nlohmann::json;

void ExpectError(const Status& s, StatusCode code, std::initializer_list<std::string_view> parts) {
  EXPECT_EQ(StatusCodeName(s.code()), StatusCodeName(code)) << s.ToString();
  for (std::string_view part : parts) {
    EXPECT_NE(s.message().find(part), std::string::npos)
        << "'" << part << "' not in: " << s.message();
  }
}

template <typename T>
Tensor Make(std::string name, DType dtype, std::vector<int64_t> shape, std::vector<T> values) {
  Tensor t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.data.resize(values.size() * sizeof(T));
  if (!values.empty()) std::memcpy(t.data.data(), values.data(), t.data.size());
  return t;
}

Tensor MakeBool(std::string name, std::vector<int64_t> shape, std::vector<uint8_t> values) {
  return Make<uint8_t>(std::move(name), DType::kBool, std::move(shape), std::move(values));
}

// One tensor per dtype, with the extremes of each range.
std::vector<Tensor> EveryDtype() {
  return {
      MakeBool("b", {2, 2}, {1, 0, 0, 1}),
      Make<uint8_t>("u8", DType::kUInt8, {3}, {0, 128, 255}),
      Make<int8_t>("i8", DType::kInt8, {3}, {-128, 0, 127}),
      Make<int32_t>("i32", DType::kInt32, {1, 3},
                    {std::numeric_limits<int32_t>::min(), -1, std::numeric_limits<int32_t>::max()}),
      Make<int64_t>("i64", DType::kInt64, {2},
                    {std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max()}),
      Make<uint16_t>("f16", DType::kFloat16, {4}, {0x3c00, 0x8000, 0x7bff, 0x0001}),
      Make<float>("f32", DType::kFloat32, {2, 3},
                  {0.1f, -0.0f, 3.0f, std::numeric_limits<float>::max(),
                   std::numeric_limits<float>::denorm_min(), -1e-20f}),
      Make<double>("f64", DType::kFloat64, {3}, {0.1, -2.5e300, 5e-324}),
      Make<float>("empty", DType::kFloat32, {0, 4}, {}),
      Make<int64_t>("scalar", DType::kInt64, {}, {42}),
  };
}

void ExpectSameTensors(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_EQ(a[i].dtype, b[i].dtype) << a[i].name;
    EXPECT_EQ(a[i].shape, b[i].shape) << a[i].name;
    EXPECT_EQ(a[i].data, b[i].data) << a[i].name;
  }
}

Result<InferRequest> Parse(std::string_view body, const KserveLimits& limits = {}) {
  return ParseInferRequest(body, std::nullopt, limits);
}

// A request body with one input `{"name":"x", <fields>}`.
std::string OneInput(std::string_view fields) {
  return R"({"inputs":[{"name":"x",)" + std::string(fields) + "}]}";
}

Status ParseError(std::string_view body) {
  auto r = Parse(body);
  EXPECT_FALSE(r.has_value()) << body;
  return r.error();
}

// ----- round trips ---------------------------------------------------------------------------

TEST(KserveTest, EveryDtypeRoundTripsThroughJsonData) {
  InferRequest request;
  request.id = "req-1";
  request.inputs = EveryDtype();
  request.outputs = {{"y", true}, {"z", std::nullopt}};
  request.binary_data_output = true;
  EncodedBody body = MUST(EncodeInferRequest(request, /*binary_inputs=*/false));
  EXPECT_FALSE(body.json_bytes.has_value());
  InferRequest parsed = MUST(Parse(body.body));
  EXPECT_EQ(parsed.id, "req-1");
  EXPECT_TRUE(parsed.binary_data_output);
  ASSERT_EQ(parsed.outputs.size(), 2u);
  EXPECT_EQ(parsed.outputs[0].name, "y");
  EXPECT_EQ(parsed.outputs[0].binary_data, std::optional<bool>(true));
  EXPECT_EQ(parsed.outputs[1].binary_data, std::nullopt);
  ExpectSameTensors(request.inputs, parsed.inputs);
}

TEST(KserveTest, EveryDtypeRoundTripsThroughBinaryData) {
  InferRequest request;
  request.inputs = EveryDtype();
  // NaN and infinities travel as binary data.
  request.inputs.push_back(Make<float>(
      "nan", DType::kFloat32, {2},
      {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}));
  EncodedBody body = MUST(EncodeInferRequest(request, /*binary_inputs=*/true));
  ASSERT_TRUE(body.json_bytes.has_value());
  const std::string header = std::to_string(*body.json_bytes);
  InferRequest parsed = MUST(ParseInferRequest(body.body, header));
  ExpectSameTensors(request.inputs, parsed.inputs);
}

TEST(KserveTest, BinaryAndJsonInputsMixInInputOrder) {
  const std::string json_part =
      R"({"inputs":[{"name":"a","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}},)"
      R"({"name":"b","shape":[1],"datatype":"FP32","data":[1.5]},)"
      R"({"name":"c","shape":[3],"datatype":"UINT8","parameters":{"binary_data_size":3}}]})";
  std::string body = json_part;
  const int32_t a[] = {7, -7};
  body.append(reinterpret_cast<const char*>(a), sizeof a);
  body += "\x01\x02\x03";
  InferRequest r = MUST(ParseInferRequest(body, std::to_string(json_part.size())));
  ASSERT_EQ(r.inputs.size(), 3u);
  EXPECT_EQ(r.inputs[0].data, Make<int32_t>("a", DType::kInt32, {2}, {7, -7}).data);
  EXPECT_EQ(r.inputs[1].ToFloats().value(), std::vector<float>{1.5f});
  EXPECT_EQ(r.inputs[2].data, (std::vector<uint8_t>{1, 2, 3}));
}

TEST(KserveTest, NestedAndFlatDataGiveTheSameTensor) {
  auto flat = MUST(Parse(OneInput(R"("shape":[2,3],"datatype":"INT64","data":[1,2,3,4,5,6])")));
  auto nested =
      MUST(Parse(OneInput(R"("shape":[2,3],"datatype":"INT64","data":[[1,2,3],[4,5,6]])")));
  ExpectSameTensors(flat.inputs, nested.inputs);
  EXPECT_EQ(flat.inputs[0].data,
            Make<int64_t>("x", DType::kInt64, {2, 3}, {1, 2, 3, 4, 5, 6}).data);
  // Empty dimensions, nested and flat.
  auto empty_nested = MUST(Parse(OneInput(R"("shape":[2,0],"datatype":"FP32","data":[[],[]])")));
  auto empty_flat = MUST(Parse(OneInput(R"("shape":[2,0],"datatype":"FP32","data":[])")));
  ExpectSameTensors(empty_nested.inputs, empty_flat.inputs);
  EXPECT_TRUE(empty_flat.inputs[0].data.empty());
}

TEST(KserveTest, NestedDataMustFollowTheShape) {
  ExpectError(ParseError(OneInput(R"("shape":[2,3],"datatype":"INT64","data":[[1,2,3],[4,5]])")),
              StatusCode::kInvalidArgument, {"input 'x'", "data[1]", "array of 3", "one of 2"});
  ExpectError(ParseError(OneInput(R"("shape":[2,2],"datatype":"INT64","data":[[1,2],3])")),
              StatusCode::kInvalidArgument, {"data[1]", "array of 2", "got 3"});
  ExpectError(ParseError(OneInput(R"("shape":[2],"datatype":"INT64","data":[[1],[2]])")),
              StatusCode::kInvalidArgument,
              {"data[0] is an array", "shape [2] ends here", "expected a value"});
  ExpectError(ParseError(OneInput(R"("shape":[1,3],"datatype":"INT64","data":[[1,2,3],[4,5,6]])")),
              StatusCode::kInvalidArgument, {"dimension 0", "got one of 2"});
}

// ----- values --------------------------------------------------------------------------------

TEST(KserveTest, OutOfRangeValuesNameTheInputAndIndex) {
  struct Case {
    const char* datatype;
    const char* data;
    const char* expect;
  } cases[] = {
      {"UINT8", "[0,300]", "data element 1: expected an integer in [0, 255] for UINT8, got 300"},
      {"UINT8", "[-1]", "data element 0: expected an integer in [0, 255] for UINT8, got -1"},
      {"INT8", "[1,2,128]", "data element 2: expected an integer in [-128, 127] for INT8"},
      {"INT8", "[-129]", "got -129"},
      {"INT32", "[2147483648]", "for INT32, got 2147483648"},
      {"INT64", "[9223372036854775808]", "for INT64, got 9223372036854775808"},
      {"INT64", "[1.5]", "expected an integer"},
      {"INT32", "[1e3]", "expected an integer"},
      {"INT32", "[true]", "got true"},
      {"UINT8", "[\"1\"]", "got \"1\""},
      {"BOOL", "[1]", "expected true or false for BOOL, got 1"},
      {"BOOL", "[null]", "got null"},
      {"FP32", "[\"NaN\"]", "expected a number for FP32, got \"NaN\""},
      {"FP32", "[1e39]", "outside the range of FP32"},
      {"FP32", "[-3.5e38]", "outside the range of FP32"},
      {"FP16", "[65520]", "outside the range of FP16"},
      {"FP16", "[-1e6]", "outside the range of FP16"},
      {"FP64", "[{}]", "expected a number for FP64, got an object"},
  };
  for (const Case& c : cases) {
    const size_t n = json::parse(c.data).size();
    const std::string body = OneInput(std::string(R"("shape":[)") + std::to_string(n) +
                                      R"(],"datatype":")" + c.datatype + R"(","data":)" + c.data);
    ExpectError(ParseError(body), StatusCode::kInvalidArgument, {"input 'x'", c.expect});
  }
}

TEST(KserveTest, Fp32ValuesJustAboveTheMaximumRoundToIt) {
  // FLT_MAX + a quarter ulp: rounds to FLT_MAX, not to infinity.
  auto r = MUST(Parse(OneInput(R"("shape":[1],"datatype":"FP32","data":[3.4028235e38])")));
  EXPECT_EQ(r.inputs[0].ToFloats().value()[0], std::numeric_limits<float>::max());
}

// FP16 from JSON: round to nearest, ties to even, from the number's double value (documented in
// kserve.h and PROTOCOL.md).
TEST(KserveTest, Fp16FromJsonRoundsToNearestEven) {
  EXPECT_EQ(HalfFromDouble(1.0), 0x3c00);
  EXPECT_EQ(HalfFromDouble(-2.0), 0xc000);
  EXPECT_EQ(HalfFromDouble(-0.0), 0x8000);
  EXPECT_EQ(HalfFromDouble(0.1), 0x2e66);
  EXPECT_EQ(HalfFromDouble(65504.0), 0x7bff);
  EXPECT_EQ(HalfFromDouble(65519.99), 0x7bff);
  EXPECT_EQ(HalfFromDouble(65520.0), std::nullopt);  // ties to even would be infinity
  EXPECT_EQ(HalfFromDouble(std::numeric_limits<double>::infinity()), std::nullopt);
  EXPECT_EQ(HalfFromDouble(std::nan("")), std::nullopt);
  EXPECT_EQ(HalfFromDouble(1.0 + 0x1p-11), 0x3c00);            // tie: to the even mantissa 0
  EXPECT_EQ(HalfFromDouble(1.0 + 3 * 0x1p-11), 0x3c02);        // tie: to the even mantissa 2
  EXPECT_EQ(HalfFromDouble(1.0 + 0x1p-11 + 0x1p-40), 0x3c01);  // above the tie
  EXPECT_EQ(HalfFromDouble(0x1p-24), 0x0001);                  // smallest subnormal
  EXPECT_EQ(HalfFromDouble(0x1p-25), 0x0000);                  // tie: to zero (even)
  EXPECT_EQ(HalfFromDouble(3 * 0x1p-25), 0x0002);              // tie: to 2 (even)
  EXPECT_EQ(HalfFromDouble(0x1p-14 - 0x1p-26), 0x0400);        // subnormal rounds up to normal
  EXPECT_EQ(HalfFromDouble(2047.5), 0x6800);                   // mantissa carries into the exponent
  // Every finite half survives a trip through its exact value.
  for (uint32_t h = 0; h <= 0xffff; ++h) {
    const double d = HalfToDouble(static_cast<uint16_t>(h));
    if (!std::isfinite(d)) continue;
    ASSERT_EQ(HalfFromDouble(d), static_cast<uint16_t>(h)) << h;
  }
  auto r = MUST(Parse(OneInput(R"("shape":[3],"datatype":"FP16","data":[0.1,1,-65504])")));
  EXPECT_EQ(r.inputs[0].data,
            Make<uint16_t>("x", DType::kFloat16, {3}, {0x2e66, 0x3c00, 0xfbff}).data);
}

// ----- malformed fields ----------------------------------------------------------------------

TEST(KserveTest, WrongTypeAtEveryFieldIsRefusedWithItsPath) {
  const std::string good_input = R"({"name":"x","shape":[1],"datatype":"FP32","data":[1]})";
  struct Case {
    std::string body;
    std::string expect;
  } cases[] = {
      {"[]", "must be a JSON object"},
      {"{", "not valid JSON"},
      {R"({"id":5,"inputs":[)" + good_input + "]}", "field 'id': expected a string"},
      {R"({"parameters":[],"inputs":[)" + good_input + "]}", "field 'parameters'"},
      {R"({"parameters":{"binary_data_output":"yes"},"inputs":[)" + good_input + "]}",
       "field 'parameters.binary_data_output'"},
      {R"({"parameters":{"priority":1},"inputs":[)" + good_input + "]}", "parameters.priority"},
      {R"({"inputs":{}})", "field 'inputs'"},
      {R"({})", "field 'inputs': missing"},
      {R"({"inputs":[]})", "field 'inputs': expected at least one input"},
      {R"({"inputs":["x"]})", "field 'inputs[0]': expected an object"},
      {R"({"inputs":[)" + good_input + R"(],"extra":1})", "extra"},
      {OneInput(R"("shape":[1],"datatype":"FP32","data":[1],"content_type":"x")"), "content_type"},
      {R"({"inputs":[{"name":1,"shape":[1],"datatype":"FP32","data":[1]}]})",
       "field 'inputs[0].name': expected a string"},
      {R"({"inputs":[{"name":"","shape":[1],"datatype":"FP32","data":[1]}]})",
       "field 'inputs[0].name': must not be empty"},
      {OneInput(R"("shape":[1],"datatype":7,"data":[1])"),
       "field 'inputs[0].datatype': expected a string"},
      {OneInput(R"("shape":[1],"data":[1])"), "field 'inputs[0].datatype': missing"},
      {OneInput(R"("shape":"1","datatype":"FP32","data":[1])"),
       "input 'x': 'shape' must be an array"},
      {OneInput(R"("datatype":"FP32","data":[1])"), "field 'inputs[0].shape': missing"},
      {OneInput(R"("shape":["1"],"datatype":"FP32","data":[1])"),
       "shape[0] must be a non-negative integer, got \"1\""},
      {OneInput(R"("shape":[1.5],"datatype":"FP32","data":[1])"), "shape[0]"},
      {OneInput(R"("shape":[2,-1],"datatype":"FP32","data":[1])"),
       "shape[1] must be a non-negative integer, got -1"},
      {OneInput(R"("shape":[1],"datatype":"FP32","data":{})"),
       "input 'x': 'data' must be an array, got an object"},
      {OneInput(R"("shape":[1],"datatype":"FP32","data":1)"), "'data' must be an array, got 1"},
      {OneInput(R"("shape":[1],"datatype":"FP32")"), "input 'x': missing 'data'"},
      {OneInput(R"("shape":[1],"datatype":"FP32","data":[1],"parameters":[])"),
       "field 'inputs[0].parameters'"},
      {OneInput(R"("shape":[1],"datatype":"FP32","parameters":{"binary_data_size":"4"})"),
       "field 'inputs[0].parameters.binary_data_size'"},
      {OneInput(R"("shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-4})"),
       "field 'inputs[0].parameters.binary_data_size'"},
      {OneInput(
           R"("shape":[1],"datatype":"FP32","data":[1],"parameters":{"shared_memory_region":"r"})"),
       "shared_memory_region"},
      {R"({"inputs":[)" + good_input + R"(],"outputs":{}})", "field 'outputs'"},
      {R"({"inputs":[)" + good_input + R"(],"outputs":[{"name":2}]})",
       "field 'outputs[0].name': expected a string"},
      {R"({"inputs":[)" + good_input +
           R"(],"outputs":[{"name":"y","parameters":{"binary_data":1}}]})",
       "field 'outputs[0].parameters.binary_data'"},
      {R"({"inputs":[)" + good_input +
           R"(],"outputs":[{"name":"y","parameters":{"classification":2}}]})",
       "classification"},
      {R"({"inputs":[)" + good_input + R"(],"outputs":[{"name":"y"},{"name":"y"}]})",
       "output 'y' is requested twice"},
  };
  for (const Case& c : cases) {
    ExpectError(ParseError(c.body), StatusCode::kInvalidArgument, {c.expect});
  }
}

TEST(KserveTest, ShapeAndDataMustAgree) {
  ExpectError(ParseError(OneInput(R"("shape":[2,2],"datatype":"FP32","data":[1,2,3])")),
              StatusCode::kInvalidArgument,
              {"input 'x'", "'data' has 3 elements", "shape [2,2] needs 4"});
  ExpectError(ParseError(OneInput(R"("shape":[],"datatype":"FP32","data":[])")),
              StatusCode::kInvalidArgument, {"'data' has 0 elements, shape [] needs 1"});
}

TEST(KserveTest, ShapeProductOverflowIsRefused) {
  ExpectError(
      ParseError(OneInput(R"("shape":[4294967296,4294967296,16],"datatype":"UINT8","data":[1])")),
      StatusCode::kInvalidArgument, {"input 'x'", "more elements than a size_t can count"});
  ExpectError(
      ParseError(OneInput(R"("shape":[9223372036854775808],"datatype":"UINT8","data":[1])")),
      StatusCode::kInvalidArgument, {"shape[0] must be a non-negative integer"});
}

TEST(KserveTest, UnsupportedDatatypesAreNamedWithTheSupportedList) {
  for (const char* datatype : {"UINT16", "UINT32", "UINT64", "INT16", "BF16", "BYTES", "fp32"}) {
    ExpectError(ParseError(OneInput(std::string(R"("shape":[1],"datatype":")") + datatype +
                                    R"(","data":[1])")),
                StatusCode::kInvalidArgument,
                {"input 'x'", std::string("datatype '") + datatype + "' is not supported",
                 "BOOL, UINT8, INT8, INT32, INT64, FP16, FP32, FP64"});
  }
}

TEST(KserveTest, DuplicateInputNamesAreRefused) {
  ExpectError(ParseError(R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},)"
                         R"({"name":"x","shape":[1],"datatype":"FP32","data":[2]}]})"),
              StatusCode::kInvalidArgument, {"input 'x' appears twice"});
}

// ----- binary extension ----------------------------------------------------------------------

std::string BinaryBody(std::string_view json_part, std::string_view raw) {
  return std::string(json_part) + std::string(raw);
}

constexpr std::string_view kBinaryJson =
    R"({"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":8}}]})";

TEST(KserveTest, TruncatedBinaryPartIsRefused) {
  const std::string header = std::to_string(kBinaryJson.size());
  for (size_t raw_bytes = 0; raw_bytes < 8; ++raw_bytes) {
    auto r = ParseInferRequest(BinaryBody(kBinaryJson, std::string(raw_bytes, '\0')), header);
    ASSERT_FALSE(r.has_value());
    ExpectError(r.error(), StatusCode::kInvalidArgument,
                {"binary data truncated", "input 'x' needs 8 bytes at offset 0",
                 "has " + std::to_string(raw_bytes) + " left"});
  }
}

TEST(KserveTest, BinarySizesMustMatchExactly) {
  const std::string header = std::to_string(kBinaryJson.size());
  auto extra = ParseInferRequest(BinaryBody(kBinaryJson, std::string(9, '\0')), header);
  ExpectError(extra.error(), StatusCode::kInvalidArgument,
              {"binary part is 9 bytes", "add up to 8"});
  const std::string wrong =
      R"({"inputs":[{"name":"x","shape":[2],"datatype":"INT32","parameters":{"binary_data_size":4}}]})";
  auto r = ParseInferRequest(BinaryBody(wrong, std::string(4, '\0')), std::to_string(wrong.size()));
  ExpectError(r.error(), StatusCode::kInvalidArgument,
              {"input 'x'", "binary_data_size is 4, expected 8 (INT32 [2])"});
  // A header with no binary inputs leaves no room for trailing bytes.
  const std::string plain = OneInput(R"("shape":[1],"datatype":"FP32","data":[1])");
  auto trailing = ParseInferRequest(plain + "zz", std::to_string(plain.size()));
  ExpectError(trailing.error(), StatusCode::kInvalidArgument, {"binary part is 2 bytes"});
  EXPECT_TRUE(ParseInferRequest(plain, std::to_string(plain.size())).has_value());
}

TEST(KserveTest, BadInferenceHeaderIsRefused) {
  const std::string body = BinaryBody(kBinaryJson, std::string(8, '\0'));
  for (const char* header : {"", "abc", "12x", "-1", "+5", " 5", "99999999999999999999999"}) {
    auto r = ParseInferRequest(body, header);
    ASSERT_FALSE(r.has_value()) << header;
    ExpectError(r.error(), StatusCode::kInvalidArgument,
                {"Inference-Header-Content-Length", "expected a decimal byte count"});
  }
  ExpectError(ParseInferRequest(body, std::to_string(body.size() + 1)).error(),
              StatusCode::kInvalidArgument, {"more than the " + std::to_string(body.size())});
  // A header that cuts the JSON short makes the JSON invalid.
  ExpectError(ParseInferRequest(body, "10").error(), StatusCode::kInvalidArgument,
              {"not valid JSON"});
}

TEST(KserveTest, BinaryInputNeedsTheHeaderAndNoData) {
  ExpectError(ParseError(std::string(kBinaryJson)), StatusCode::kInvalidArgument,
              {"input 'x': binary_data_size given, but the request has no "
               "Inference-Header-Content-Length header"});
  const std::string both =
      OneInput(R"("shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4})");
  ExpectError(ParseInferRequest(both + "abcd", std::to_string(both.size())).error(),
              StatusCode::kInvalidArgument, {"has both 'data' and parameters.binary_data_size"});
}

TEST(KserveTest, BinaryBoolBytesMustBeZeroOrOne) {
  const std::string j =
      R"({"inputs":[{"name":"m","shape":[3],"datatype":"BOOL","parameters":{"binary_data_size":3}}]})";
  ExpectError(
      ParseInferRequest(j + std::string("\x01\x00\x02", 3), std::to_string(j.size())).error(),
      StatusCode::kInvalidArgument, {"input 'm': BOOL element 2 is byte 2, expected 0 or 1"});
}

// ----- limits --------------------------------------------------------------------------------

TEST(KserveTest, LimitsAreResourceExhausted) {
  KserveLimits limits;
  limits.max_body_bytes = 100;
  ExpectError(Parse(std::string(101, ' '), limits).error(), StatusCode::kResourceExhausted,
              {"101 bytes, more than the 100 allowed"});

  limits = {};
  limits.max_tensors = 2;
  ExpectError(Parse(R"({"inputs":[{},{},{}]})", limits).error(), StatusCode::kResourceExhausted,
              {"3 inputs, more than the 2 allowed"});
  ExpectError(Parse(R"({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]}],)"
                    R"("outputs":[{"name":"a"},{"name":"b"},{"name":"c"}]})",
                    limits)
                  .error(),
              StatusCode::kResourceExhausted, {"3 outputs, more than the 2 allowed"});

  limits = {};
  limits.max_tensor_elements = 6;
  EXPECT_TRUE(Parse(OneInput(R"("shape":[2,3],"datatype":"UINT8","data":[1,2,3,4,5,6])"), limits)
                  .has_value());
  ExpectError(Parse(OneInput(R"("shape":[7],"datatype":"UINT8","data":[1])"), limits).error(),
              StatusCode::kResourceExhausted,
              {"input 'x'", "has 7 elements, more than the 6 allowed per tensor"});

  limits = {};
  limits.max_dims = 2;
  ExpectError(Parse(OneInput(R"("shape":[1,1,1],"datatype":"UINT8","data":[1])"), limits).error(),
              StatusCode::kResourceExhausted, {"3 dimensions, more than the 2 allowed"});

  limits = {};
  limits.max_data_depth = 2;
  EXPECT_TRUE(
      Parse(OneInput(R"("shape":[1,1,1],"datatype":"UINT8","data":[1])"), limits).has_value());
  ExpectError(
      Parse(OneInput(R"("shape":[1,1,1],"datatype":"UINT8","data":[[[1]]])"), limits).error(),
      StatusCode::kResourceExhausted, {"nests deeper than the 2 levels allowed"});
}

TEST(KserveTest, LargeShapeWithLittleDataFailsBeforeAllocating) {
  // 16 Mi elements of FP64 claimed, one given: refused on the count, nothing large allocated.
  ExpectError(ParseError(OneInput(R"("shape":[4096,4096],"datatype":"FP64","data":[[1]])")),
              StatusCode::kInvalidArgument, {"must be an array of 4096"});
  ExpectError(ParseError(OneInput(R"("shape":[4096,4096],"datatype":"FP64","data":[1])")),
              StatusCode::kInvalidArgument, {"'data' has 1 elements"});
}

TEST(KserveTest, DeepJsonIsRefusedBeforeParsing) {
  const std::string deep = OneInput(R"("shape":[1],"datatype":"UINT8","data":)" +
                                    std::string(40, '[') + "1" + std::string(40, ']'));
  ExpectError(ParseError(deep), StatusCode::kInvalidArgument, {"nests deeper than"});
}

// ----- responses -----------------------------------------------------------------------------

TEST(KserveTest, ResponseCarriesEveryOutputAsJsonByDefault) {
  InferRequest request;
  request.id = "abc";
  const std::vector<Tensor> outputs = EveryDtype();
  EncodedBody body = MUST(EncodeInferResponse(request, "resnet", "2", outputs));
  EXPECT_FALSE(body.json_bytes.has_value());
  const json doc = json::parse(body.body);
  EXPECT_EQ(doc["model_name"], "resnet");
  EXPECT_EQ(doc["model_version"], "2");
  EXPECT_EQ(doc["id"], "abc");
  ASSERT_EQ(doc["outputs"].size(), outputs.size());
  EXPECT_EQ(doc["outputs"][0], json::parse(R"({"name":"b","datatype":"BOOL","shape":[2,2],)"
                                           R"("data":[true,false,false,true]})"));
  EXPECT_EQ(doc["outputs"][1]["data"], json::parse("[0,128,255]"));
  EXPECT_EQ(doc["outputs"][5]["data"], json::parse("[1.0,-0.0,65504.0,5.9604645e-08]"));
  EXPECT_EQ(doc["outputs"][9]["shape"], json::array());

  // The JSON data reads back into the same tensors: the response's outputs as request inputs.
  json as_request = {{"inputs", doc["outputs"]}};
  InferRequest back = MUST(Parse(as_request.dump()));
  ExpectSameTensors(outputs, back.inputs);
  // No version, no id: the fields are left out.
  const json bare = json::parse(MUST(EncodeInferResponse({}, "m", "", outputs)).body);
  EXPECT_FALSE(bare.contains("model_version"));
  EXPECT_FALSE(bare.contains("id"));
}

TEST(KserveTest, ResponseBinaryOutputFollowsRequestAndOutputParameters) {
  const std::vector<Tensor> outputs = {
      Make<float>("a", DType::kFloat32, {2}, {1.0f, std::numeric_limits<float>::quiet_NaN()}),
      Make<int32_t>("b", DType::kInt32, {1}, {5}),
  };
  InferRequest request;
  request.binary_data_output = true;
  request.outputs = {{"b", false}, {"a", std::nullopt}};  // b overrides, a follows the default
  EncodedBody body = MUST(EncodeInferResponse(request, "m", "", outputs));
  ASSERT_TRUE(body.json_bytes.has_value());
  const json doc = json::parse(body.body.substr(0, *body.json_bytes));
  ASSERT_EQ(doc["outputs"].size(), 2u);
  EXPECT_EQ(doc["outputs"][0]["name"], "b");
  EXPECT_EQ(doc["outputs"][0]["data"], json::parse("[5]"));
  EXPECT_EQ(doc["outputs"][1]["name"], "a");
  EXPECT_FALSE(doc["outputs"][1].contains("data"));
  EXPECT_EQ(doc["outputs"][1]["parameters"]["binary_data_size"], 8);
  EXPECT_EQ(body.body.substr(*body.json_bytes),
            std::string(reinterpret_cast<const char*>(outputs[0].data.data()), 8));

  // Per-output binary_data without the request parameter.
  InferRequest one;
  one.outputs = {{"a", true}};
  EncodedBody only_a = MUST(EncodeInferResponse(one, "m", "", outputs));
  ASSERT_TRUE(only_a.json_bytes.has_value());
  EXPECT_EQ(only_a.body.size(), *only_a.json_bytes + 8);
}

TEST(KserveTest, ResponseRefusesWhatItCannotEncode) {
  const std::vector<Tensor> outputs = {
      Make<float>("a", DType::kFloat32, {2}, {1.0f, std::numeric_limits<float>::infinity()}),
      Make<double>("nan", DType::kFloat64, {1}, {std::nan("")}),
      Make<uint16_t>("h", DType::kFloat16, {1}, {0x7e00}),
  };
  ExpectError(EncodeInferResponse({}, "m", "", std::span(outputs).first(1)).error(),
              StatusCode::kInvalidArgument,
              {"output 'a': element 1 is infinite", "request it with binary_data"});
  ExpectError(EncodeInferResponse({}, "m", "", std::span(outputs).subspan(1, 1)).error(),
              StatusCode::kInvalidArgument, {"output 'nan': element 0 is NaN"});
  ExpectError(EncodeInferResponse({}, "m", "", std::span(outputs).subspan(2)).error(),
              StatusCode::kInvalidArgument, {"output 'h': element 0 is NaN"});
  InferRequest missing;
  missing.outputs = {{"zzz", std::nullopt}};
  ExpectError(EncodeInferResponse(missing, "m", "", outputs).error(), StatusCode::kInvalidArgument,
              {"requested output 'zzz' is not an output of the model", "'a', 'nan', 'h'"});
  Tensor bad = Make<float>("short", DType::kFloat32, {3}, {1.0f});
  ExpectError(EncodeInferResponse({}, "m", "", std::span(&bad, 1)).error(),
              StatusCode::kInvalidArgument, {"output 'short'"});
}

// ----- client side: response decoding --------------------------------------------------------

Result<InferResponse> ParseEncoded(const EncodedBody& body, const KserveLimits& limits = {}) {
  const std::optional<std::string> header =
      body.json_bytes ? std::optional<std::string>(std::to_string(*body.json_bytes)) : std::nullopt;
  return ParseInferResponse(body.body, header, limits);
}

TEST(KserveTest, ResponseDecodesEveryDtypeFromJsonOrBinaryData) {
  std::vector<Tensor> outputs = EveryDtype();
  for (const bool binary : {false, true}) {
    SCOPED_TRACE(binary ? "binary data" : "JSON data");
    if (binary) {
      // NaN and infinities come back only as binary data.
      outputs.push_back(Make<float>(
          "nan", DType::kFloat32, {2},
          {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}));
    }
    InferRequest request;
    request.id = "req-7";
    request.binary_data_output = binary;
    const EncodedBody body = MUST(EncodeInferResponse(request, "resnet", "2", outputs));
    EXPECT_EQ(body.json_bytes.has_value(), binary);
    const InferResponse decoded = MUST(ParseEncoded(body));
    EXPECT_EQ(decoded.model_name, "resnet");
    EXPECT_EQ(decoded.model_version, "2");
    EXPECT_EQ(decoded.id, "req-7");
    ExpectSameTensors(outputs, decoded.outputs);
  }
  // No version, no id, no outputs: all allowed.
  const InferResponse bare = MUST(ParseEncoded(MUST(EncodeInferResponse({}, "m", "", {}))));
  EXPECT_EQ(bare.model_name, "m");
  EXPECT_EQ(bare.model_version, "");
  EXPECT_EQ(bare.id, "");
  EXPECT_TRUE(bare.outputs.empty());
}

TEST(KserveTest, ResponseDecodesBinaryAndJsonOutputsInResponseOrder) {
  const std::vector<Tensor> outputs = {
      Make<float>("a", DType::kFloat32, {2}, {1.0f, std::numeric_limits<float>::quiet_NaN()}),
      Make<int32_t>("b", DType::kInt32, {1}, {5}),
      MakeBool("c", {3}, {1, 0, 1}),
  };
  InferRequest request;
  request.binary_data_output = true;
  request.outputs = {{"c", std::nullopt}, {"b", false}, {"a", std::nullopt}};
  InferResponse decoded = MUST(ParseEncoded(MUST(EncodeInferResponse(request, "m", "", outputs))));
  ExpectSameTensors({outputs[2], outputs[1], outputs[0]}, decoded.outputs);
}

TEST(KserveTest, ResponseBinaryPartMustMatchExactly) {
  InferRequest request;
  request.binary_data_output = true;
  const std::vector<Tensor> outputs = {Make<int32_t>("x", DType::kInt32, {2}, {1, 2}),
                                       Make<uint8_t>("y", DType::kUInt8, {3}, {7, 8, 9})};
  const EncodedBody body = MUST(EncodeInferResponse(request, "m", "", outputs));
  const size_t json_bytes = *body.json_bytes;
  const std::string header = std::to_string(json_bytes);
  // Cut at every length of the binary part: the output whose bytes are missing is named.
  for (size_t cut = json_bytes; cut < body.body.size(); ++cut) {
    auto r = ParseInferResponse(std::string_view(body.body).substr(0, cut), header);
    ASSERT_FALSE(r.has_value()) << cut;
    const bool in_x = cut - json_bytes < 8;
    ExpectError(r.error(), StatusCode::kInvalidArgument,
                {"binary data truncated", in_x ? "output 'x' needs 8 bytes at offset 0"
                                               : "output 'y' needs 3 bytes at offset 8"});
  }
  auto extra = ParseInferResponse(body.body + "z", header);
  ExpectError(extra.error(), StatusCode::kInvalidArgument,
              {"binary part is 12 bytes", "outputs' binary_data_size add up to 11"});
  // Binary outputs without the header: the JSON alone is not a valid body.
  ExpectError(
      ParseInferResponse(std::string_view(body.body).substr(0, json_bytes), std::nullopt).error(),
      StatusCode::kInvalidArgument,
      {"output 'x': binary_data_size given, but the response has no "
       "Inference-Header-Content-Length header"});
  ExpectError(ParseInferResponse(body.body, "x").error(), StatusCode::kInvalidArgument,
              {"Inference-Header-Content-Length", "expected a decimal byte count"});
  // A size that does not fit the shape.
  std::string json_part = body.body.substr(0, json_bytes);
  json_part.replace(json_part.find("\"binary_data_size\":8"), 20, "\"binary_data_size\":4");
  ExpectError(
      ParseInferResponse(json_part + body.body.substr(json_bytes), std::to_string(json_part.size()))
          .error(),
      StatusCode::kInvalidArgument, {"output 'x': binary_data_size is 4, expected 8"});
  // BOOL bytes other than 0 and 1.
  const std::string bools =
      R"({"model_name":"m","outputs":[{"name":"m","datatype":"BOOL","shape":[2],)"
      R"("parameters":{"binary_data_size":2}}]})";
  ExpectError(
      ParseInferResponse(bools + std::string("\x00\x05", 2), std::to_string(bools.size())).error(),
      StatusCode::kInvalidArgument, {"output 'm': BOOL element 1 is byte 5"});
}

TEST(KserveTest, ResponseOverLimitsIsResourceExhausted) {
  InferRequest request;
  request.binary_data_output = true;
  const std::vector<Tensor> outputs = {
      Make<double>("big", DType::kFloat64, {4, 4}, std::vector<double>(16, 1.5))};
  const EncodedBody binary = MUST(EncodeInferResponse(request, "m", "", outputs));
  const EncodedBody json_data = MUST(EncodeInferResponse({}, "m", "", outputs));
  KserveLimits limits;
  limits.max_body_bytes = binary.body.size() - 1;
  ExpectError(ParseEncoded(binary, limits).error(), StatusCode::kResourceExhausted,
              {"infer response body is " + std::to_string(binary.body.size()) + " bytes"});
  limits = {};
  limits.max_tensor_elements = 15;
  for (const EncodedBody* body : {&binary, &json_data}) {
    ExpectError(ParseEncoded(*body, limits).error(), StatusCode::kResourceExhausted,
                {"output 'big'", "16 elements, more than the 15 allowed"});
  }
  limits = {};
  limits.max_tensors = 1;
  const std::vector<Tensor> two = {outputs[0], Make<uint8_t>("u", DType::kUInt8, {1}, {1})};
  ExpectError(ParseEncoded(MUST(EncodeInferResponse({}, "m", "", two)), limits).error(),
              StatusCode::kResourceExhausted, {"the response has 2 outputs, more than the 1"});
  limits = {};
  limits.max_dims = 1;
  ExpectError(ParseEncoded(binary, limits).error(), StatusCode::kResourceExhausted,
              {"2 dimensions, more than the 1 allowed"});
}

TEST(KserveTest, ResponseWrongTypesAreRefusedWithTheirPath) {
  const std::string good = R"({"name":"y","datatype":"FP32","shape":[1],"data":[1.5]})";
  // Body, and what the message must say.
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"outputs":[)" + good + "]}", "field 'model_name': missing"},
      {R"({"model_name":7,"outputs":[)" + good + "]}", "field 'model_name': expected a string"},
      {R"({"model_name":"","outputs":[)" + good + "]}", "field 'model_name': must not be empty"},
      {R"({"model_name":"m","model_version":2,"outputs":[)" + good + "]}",
       "field 'model_version': expected a string"},
      {R"({"model_name":"m","id":false,"outputs":[)" + good + "]}",
       "field 'id': expected a string"},
      {R"({"model_name":"m"})", "field 'outputs': missing"},
      {R"({"model_name":"m","outputs":{}})", "field 'outputs': expected an array"},
      {R"({"model_name":"m","outputs":[7]})", "field 'outputs[0]': expected an object"},
      {R"({"model_name":"m","parameters":{},"outputs":[)" + good + "]}", "parameters"},
      {R"({"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1],"data":[1],)"
       R"("classification":1}]})",
       "classification"},
      {R"({"model_name":"m","outputs":[{"name":"y","datatype":"STRING","shape":[1],"data":[1]}]})",
       "output 'y': datatype 'STRING' is not supported"},
      {R"({"model_name":"m","outputs":[{"name":"y","datatype":"INT8","shape":[1],"data":[1.5]}]})",
       "output 'y': data element 0: expected an integer in [-128, 127] for INT8, got 1.5"},
      {R"({"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[1]}]})",
       "output 'y': 'data' has 1 elements, shape [2] needs 2"},
      {R"({"model_name":"m","outputs":[{"name":"y","datatype":"BOOL","shape":[1],"data":[1]}]})",
       "output 'y': data element 0: expected true or false"},
      {R"({"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[-1],"data":[]}]})",
       "output 'y': shape[0] must be a non-negative integer"},
      {R"({"model_name":"m","outputs":[{"name":"y","datatype":"FP32","shape":[1]}]})",
       "output 'y': missing 'data'"},
      {R"({"model_name":"m","outputs":[)" + good + "," + good + "]}",
       "output 'y' appears twice; output names must be unique"},
      {"[]", "must be a JSON object"},
      {"{", "not valid JSON"},
  };
  for (const auto& [body, expect] : cases) {
    auto r = ParseInferResponse(body, std::nullopt);
    ASSERT_FALSE(r.has_value()) << body;
    ExpectError(r.error(), StatusCode::kInvalidArgument, {expect});
  }
}

TEST(KserveTest, ErrorMessageIsTheErrorStringOrTheTrimmedBody) {
  EXPECT_EQ(ErrorMessageFromBody(EncodeErrorBody(PermissionDenied("revoked: by the vendor"))),
            "revoked: by the vendor");
  EXPECT_EQ(ErrorMessageFromBody("  \r\nupstream went away\n"), "upstream went away");
  EXPECT_EQ(ErrorMessageFromBody(""), "");
  // Other shapes (the custodian's {"error": {...}}) come back as they are.
  EXPECT_EQ(ErrorMessageFromBody(R"({"error":{"code":"x"}})"), R"({"error":{"code":"x"}})");
  const std::string long_body(kMaxRawErrorBytes + 10, 'a');
  EXPECT_EQ(ErrorMessageFromBody(long_body), std::string(kMaxRawErrorBytes, 'a') + "...");
}

// ----- metadata, errors, routes --------------------------------------------------------------

TEST(KserveTest, MetadataListsTensorsWithDynamicDimensions) {
  ModelMetadata m;
  m.name = "resnet50";
  m.versions = {"1", "2"};
  m.platform = "onnx";
  m.inputs = {{"input", DType::kFloat32, std::vector<int64_t>{-1, 3, 224, 224}}};
  m.outputs = {{"logits", DType::kFloat16, std::vector<int64_t>{-1, 1000}},
               {"unknown", std::nullopt, std::nullopt}};
  const json doc = json::parse(MUST(EncodeModelMetadata(m)));
  EXPECT_EQ(doc,
            json::parse(R"({"name":"resnet50","versions":["1","2"],"platform":"onnx",)"
                        R"("inputs":[{"name":"input","datatype":"FP32","shape":[-1,3,224,224]}],)"
                        R"("outputs":[{"name":"logits","datatype":"FP16","shape":[-1,1000]},)"
                        R"({"name":"unknown"}]})"));
  m.inputs[0].shape = std::vector<int64_t>{-2};
  ExpectError(EncodeModelMetadata(m).error(), StatusCode::kInvalidArgument,
              {"tensor 'input'", "dimension -2"});
  m.name = "a/b";
  ExpectError(EncodeModelMetadata(m).error(), StatusCode::kInvalidArgument, {"model name 'a/b'"});
}

TEST(KserveTest, ErrorBodyIsTheProtocolShape) {
  EXPECT_EQ(json::parse(EncodeErrorBody(InvalidArgument("input 'x': bad \"quote\""))),
            json::parse(R"({"error":"input 'x': bad \"quote\""})"));
  // Invalid UTF-8 in a message never makes encoding fail.
  EXPECT_FALSE(EncodeErrorBody(InvalidArgument("\xff")).empty());
}

TEST(KserveTest, DatatypeNamesRoundTrip) {
  for (DType d : {DType::kBool, DType::kUInt8, DType::kInt8, DType::kInt32, DType::kInt64,
                  DType::kFloat16, DType::kFloat32, DType::kFloat64}) {
    EXPECT_EQ(MUST(ParseDatatype(DatatypeName(d))), d);
  }
}

TEST(KserveTest, RoutesParseModelVersionAndEndpoint) {
  auto meta = MUST(ParseModelRoute("/v2/models/resnet"));
  EXPECT_EQ(meta.model, "resnet");
  EXPECT_EQ(meta.version, "");
  EXPECT_EQ(meta.kind, ModelRoute::Kind::kMetadata);
  auto infer = MUST(ParseModelRoute("/v2/models/res.net-1_a/versions/3/infer"));
  EXPECT_EQ(infer.model, "res.net-1_a");
  EXPECT_EQ(infer.version, "3");
  EXPECT_EQ(infer.kind, ModelRoute::Kind::kInfer);
  EXPECT_EQ(MUST(ParseModelRoute("/v2/models/m/ready")).kind, ModelRoute::Kind::kReady);
  EXPECT_EQ(MUST(ParseModelRoute("/v2/models/m/versions/2")).version, "2");
  for (const char* bad : {"/v2/models/", "/v2/models//infer", "/v2/models/m/infer/",
                          "/v2/models/m/x", "/v2/models/m/versions", "/v2/models/m/versions//infer",
                          "/v2/models/%41/infer", "/v2/models/../infer", "/v1/models/m",
                          "/v2/models/m/versions/1/infer/x", "/v2/models/m?x=1"}) {
    ExpectError(ParseModelRoute(bad).error(), StatusCode::kNotFound, {"no route"});
  }
}

}  // namespace
}  // namespace custody::agent::kserve
