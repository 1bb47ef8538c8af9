#include "http/router.h"

#include <gtest/gtest.h>

namespace custody::http {
namespace {

Handler Named(std::string name) {
  return [name](const Request&, const Principal&) { return Response::Json(200, {{"h", name}}); };
}

TEST(Router, MatchesLiteralsAndDecodesParameters) {
  Router router;
  router.Add("GET", "/v1/admin/models/{model_id}", Access::kAdmin, Named("model"));
  const Router::Match m = router.Resolve("GET", "/v1/admin/models/ab%2Fcd");
  ASSERT_EQ(m.kind, Router::Match::Kind::kFound);
  EXPECT_EQ(m.path_params.at("model_id"), "ab/cd");
  EXPECT_EQ(router.Resolve("GET", "/v1/admin/models/").kind, Router::Match::Kind::kNoPath);
  EXPECT_EQ(router.Resolve("GET", "/v1/admin/models").kind, Router::Match::Kind::kNoPath);
  EXPECT_EQ(router.Resolve("GET", "/v1/admin/models/a/b").kind, Router::Match::Kind::kNoPath);
}

TEST(Router, LiteralSegmentBeatsParameter) {
  Router router;
  router.Add("GET", "/v1/devices/{id}", Access::kViewer, Named("any"));
  router.Add("GET", "/v1/devices/self", Access::kDevice, Named("self"));
  const Router::Match self = router.Resolve("GET", "/v1/devices/self");
  ASSERT_EQ(self.kind, Router::Match::Kind::kFound);
  EXPECT_EQ(router.routes()[self.route_index].info.pattern, "/v1/devices/self");
  const Router::Match other = router.Resolve("GET", "/v1/devices/d1");
  EXPECT_EQ(router.routes()[other.route_index].info.pattern, "/v1/devices/{id}");
}

TEST(Router, WrongMethodListsAllowedMethods) {
  Router router;
  router.Add("GET", "/v1/x", Access::kPublic, Named("get"));
  router.Add("POST", "/v1/x", Access::kPublic, Named("post"));
  const Router::Match m = router.Resolve("DELETE", "/v1/x");
  EXPECT_EQ(m.kind, Router::Match::Kind::kWrongMethod);
  EXPECT_EQ(m.allowed_methods, (std::vector<std::string>{"GET", "POST"}));
}

TEST(Router, BadEscapeInParameterIsBadPath) {
  Router router;
  router.Add("GET", "/v1/x/{id}", Access::kPublic, Named("x"));
  const Router::Match m = router.Resolve("GET", "/v1/x/%zz");
  EXPECT_EQ(m.kind, Router::Match::Kind::kBadPath);
  EXPECT_EQ(m.error.code(), StatusCode::kInvalidArgument);
}

TEST(Router, RoutesListsEveryRouteWithItsAccess) {
  Router router;
  router.Add("GET", "/healthz", Access::kPublic, Named("h"));
  router.AddAsync("GET", "/v1/device/events", Access::kDevice,
                  [](const Request&, const Principal&) -> asio::awaitable<Response> {
                    co_return Response::Json(200, nlohmann::json::object());
                  });
  const std::vector<RouteInfo> routes = router.Routes();
  ASSERT_EQ(routes.size(), 2u);
  EXPECT_EQ(routes[0].pattern, "/healthz");
  EXPECT_EQ(routes[0].access, Access::kPublic);
  EXPECT_FALSE(routes[0].async);
  EXPECT_EQ(routes[1].access, Access::kDevice);
  EXPECT_TRUE(routes[1].async);
}

TEST(RouterDeathTest, InvalidOrDuplicateRoutesAbort) {
  Router router;
  router.Add("GET", "/v1/x/{id}", Access::kPublic, Named("x"));
  EXPECT_DEATH(router.Add("GET", "/v1/x/{other}", Access::kPublic, Named("y")), "twice");
  EXPECT_DEATH(router.Add("GET", "v1/x", Access::kPublic, Named("y")), "start with '/'");
  EXPECT_DEATH(router.Add("get", "/v1/y", Access::kPublic, Named("y")), "upper-case");
  EXPECT_DEATH(router.Add("GET", "/v1/{a}/{a}", Access::kPublic, Named("y")), "parameter");
}

TEST(Response, FromStatusMapsCodesAndUsesTheErrorShape) {
  const std::pair<Status, int> cases[] = {
      {InvalidArgument("m"), 400},    {OutOfRange("m"), 400},        {Unauthenticated("m"), 401},
      {PermissionDenied("m"), 403},   {NotFound("m"), 404},          {AlreadyExists("m"), 409},
      {FailedPrecondition("m"), 409}, {ResourceExhausted("m"), 429}, {Unimplemented("m"), 501},
      {Unavailable("m"), 503},        {DeadlineExceeded("m"), 504},  {DataLoss("m"), 500},
      {Internal("m"), 500},
  };
  for (const auto& [status, http] : cases) {
    const Response r = Response::FromStatus(status);
    EXPECT_EQ(r.status, http) << status.ToString();
    EXPECT_EQ(r.content_type, "application/json");
    const nlohmann::json body = nlohmann::json::parse(r.body);
    EXPECT_EQ(body["error"]["code"], std::string(StatusCodeName(status.code())));
    EXPECT_EQ(body["error"]["message"], "m");
  }
}

TEST(Response, JsonReplacesInvalidUtf8InsteadOfThrowing) {
  const Response r = Response::Json(200, {{"name", std::string("a\xff")}});
  EXPECT_EQ(r.body, "{\"name\":\"a\xef\xbf\xbd\"}");
}

}  // namespace
}  // namespace custody::http
