{
  description = "Muster: pull-based GitOps fleet manager for Linux servers";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      version = "0.1.0";
      src = nixpkgs.lib.cleanSourceWith {
        src = ./.;
        filter = path: type: !(nixpkgs.lib.hasInfix "/target" path);
      };
      workspacePackage = pkgs: { pname, crate, description }:
        pkgs.rustPlatform.buildRustPackage {
          inherit pname version src;
          cargoLock.lockFile = ./Cargo.lock;
          cargoBuildFlags = [ "-p" crate ];
          cargoTestFlags = [ "-p" crate ];
          meta = {
            inherit description;
            license = pkgs.lib.licenses.asl20;
            platforms = pkgs.lib.platforms.linux;
          };
        };
    in
    {
      packages = forAllSystems (pkgs: rec {
        muster = workspacePackage pkgs {
          pname = "muster";
          crate = "muster-controller";
          description = "The Muster controller and the muster command";
        };
        muster-agent = workspacePackage pkgs {
          pname = "muster-agent";
          crate = "muster-agent";
          description = "The Muster host agent";
        };
        default = muster;
      });

      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ cargo rustc clippy rustfmt cargo-nextest rust-analyzer ];
        };
      });
    };
}
