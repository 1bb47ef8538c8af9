// custody: the command-line tool of Custody. Thin: parse, dispatch, exit with the documented code.
#include <CLI/CLI.hpp>

#include "cli/cli_common.h"

int main(int argc, char** argv) {
  CLI::App app{"custody: seal AI models and keep them under the vendor's control"};
  app.require_subcommand(1);
  app.set_version_flag("--version-info", "custody 0.1.0 (sealed model format v1)");
  int exit_code = custody::cli::kExitOk;
  custody::cli::RegisterModelCommands(app, exit_code);
  custody::cli::RegisterRunCommand(app, exit_code);
  custody::cli::RegisterTpmCommands(app, exit_code);
  custody::cli::RegisterAdminCommands(app, exit_code);
  custody::cli::RegisterAgentCommands(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : custody::cli::kExitUsage;
  }
  return exit_code;
}
