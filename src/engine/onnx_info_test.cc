#include "engine/onnx_info.h"

#include <gtest/gtest.h>

#include <string>

namespace custody::engine {
namespace {

// A minimal protobuf writer, enough to build ONNX ModelProtos by hand.
class Proto {
 public:
  Proto& Varint(uint32_t field, uint64_t v) {
    Tag(field, 0);
    PutVarint(v);
    return *this;
  }
  Proto& Bytes(uint32_t field, const std::string& s) {
    Tag(field, 2);
    PutVarint(s.size());
    out_.insert(out_.end(), s.begin(), s.end());
    return *this;
  }
  Proto& Message(uint32_t field, const Proto& m) { return Bytes(field, m.str()); }
  Proto& Fixed32(uint32_t field, uint32_t v) {
    Tag(field, 5);
    for (int i = 0; i < 4; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
    return *this;
  }
  std::string str() const { return out_; }
  custody::Bytes bytes() const { return custody::Bytes(out_.begin(), out_.end()); }

 private:
  void Tag(uint32_t field, uint32_t wt) { PutVarint((uint64_t{field} << 3) | wt); }
  void PutVarint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7f) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  std::string out_;
};

Proto Dim(int64_t value) { return Proto().Varint(1, static_cast<uint64_t>(value)); }
Proto NamedDim(const std::string& name) { return Proto().Bytes(2, name); }

Proto ValueInfo(const std::string& name, uint64_t elem_type, std::vector<Proto> dims) {
  Proto shape;
  for (const Proto& d : dims) shape.Message(1, d);
  Proto tensor_type = Proto().Varint(1, elem_type).Message(2, shape);
  return Proto().Bytes(1, name).Message(2, Proto().Message(1, tensor_type));
}

// ir_version 8; graph: initializer "w"; inputs "x" float[N,3,224,224] and "w" (an initializer);
// output "logits" float[N,1000]; plus fields the reader must skip.
custody::Bytes SampleModel() {
  Proto graph;
  graph.Message(1, Proto().Bytes(1, "x").Bytes(2, "logits").Bytes(4, "Gemm"));  // a node
  graph.Bytes(2, "torch_jit");
  graph.Message(5, Proto().Varint(1, 2).Varint(2, 1).Bytes(8, "w").Bytes(9, std::string(64, '\7')));
  graph.Message(11, ValueInfo("x", 1, {NamedDim("N"), Dim(3), Dim(224), Dim(224)}));
  graph.Message(11, ValueInfo("w", 1, {Dim(2)}));
  graph.Message(12, ValueInfo("logits", 1, {NamedDim("N"), Dim(1000)}));
  return Proto()
      .Varint(1, 8)
      .Bytes(2, "pytorch")
      .Fixed32(99, 0xdeadbeef)
      .Message(8, Proto().Varint(2, 11))
      .Message(7, graph)
      .bytes();
}

TEST(OnnxInfoTest, ReadsInputsAndOutputsAndDropsInitializers) {
  Result<OnnxModelInfo> info = InspectOnnxModel(SampleModel());
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  ASSERT_EQ(info->inputs.size(), 1u);
  EXPECT_EQ(info->inputs[0].ToString(), "x: float32[-1,3,224,224]");
  ASSERT_EQ(info->outputs.size(), 1u);
  EXPECT_EQ(info->outputs[0].ToString(), "logits: float32[-1,1000]");
}

TEST(OnnxInfoTest, UnknownElementTypesAndMissingShapesStayUnknown) {
  Proto graph;
  graph.Message(11, Proto().Bytes(1, "s").Message(2, Proto().Message(1, Proto().Varint(1, 8))));
  graph.Message(12, Proto().Bytes(1, "y"));
  Result<OnnxModelInfo> info = InspectOnnxModel(Proto().Varint(1, 8).Message(7, graph).bytes());
  ASSERT_TRUE(info.has_value()) << info.error().ToString();
  EXPECT_EQ(info->inputs[0].ToString(), "s: ?[?]");
  EXPECT_EQ(info->outputs[0].ToString(), "y: ?[?]");
}

TEST(OnnxInfoTest, RejectsThingsThatAreNotOnnx) {
  custody::Bytes zip = {'P', 'K', 3, 4, 20, 0, 0, 0, 0, 0};
  custody::Bytes text(AsBytes("hello, world").begin(), AsBytes("hello, world").end());
  custody::Bytes no_graph = Proto().Varint(1, 8).bytes();
  custody::Bytes no_outputs = Proto().Varint(1, 8).Message(7, Proto().Bytes(2, "g")).bytes();
  for (const custody::Bytes* b : {&zip, &text, &no_graph, &no_outputs}) {
    Result<OnnxModelInfo> info = InspectOnnxModel(*b);
    ASSERT_FALSE(info.has_value());
    EXPECT_EQ(info.error().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(info.error().message().find("not a valid ONNX model"), std::string::npos);
  }
}

TEST(OnnxInfoTest, EveryTruncationIsAnError) {
  custody::Bytes model = SampleModel();
  for (size_t n = 0; n < model.size(); ++n) {
    EXPECT_FALSE(InspectOnnxModel(ByteSpan(model.data(), n)).has_value()) << n;
  }
}

TEST(OnnxInfoTest, EveryBitFlipIsHandled) {
  custody::Bytes model = SampleModel();
  for (size_t i = 0; i < model.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      custody::Bytes flipped = model;
      flipped[i] ^= static_cast<uint8_t>(1 << bit);
      Result<OnnxModelInfo> info = InspectOnnxModel(flipped);  // must not crash
      if (info.has_value()) {
        EXPECT_FALSE(info->outputs.empty());
      }
    }
  }
}

TEST(OnnxInfoTest, OverlongVarintsAndHugeLengthsAreRejected) {
  custody::Bytes overlong = {0x08, 0xff, 0xff, 0xff, 0xff, 0xff,
                             0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
  EXPECT_FALSE(InspectOnnxModel(overlong).has_value());
  custody::Bytes huge_len = {0x08, 0x01, 0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f};
  Result<OnnxModelInfo> r = InspectOnnxModel(huge_len);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message().find("runs past the end"), std::string::npos)
      << r.error().message();
  custody::Bytes group = {0x08, 0x01, 0x0b};  // field 1, wire type 3 (start group)
  EXPECT_FALSE(InspectOnnxModel(group).has_value());
}

}  // namespace
}  // namespace custody::engine
