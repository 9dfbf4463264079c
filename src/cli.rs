//! Command-line definitions; doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Build verified, bootable Ubuntu images for a ZooKeeper/Kafka/Storm cluster from one YAML recipe.
///
/// Exit codes: 0 success, 1 a build or runtime failure, 2 a usage or recipe error.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, propagate_version = true)]
pub struct Cli {
    /// The recipe describing the cluster.
    #[arg(
        short,
        long,
        global = true,
        env = "IMGBUILD_RECIPE",
        default_value = "recipes/cluster.yaml"
    )]
    pub recipe: PathBuf,

    /// Download cache (default: $XDG_CACHE_HOME/imgbuild, or ~/.cache/imgbuild).
    #[arg(long, global = true, env = "IMGBUILD_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Rewrite URLs starting with FROM to start with TO (repeatable; also $IMGBUILD_MIRRORS and
    /// the recipe's `mirrors:`).
    #[arg(long = "mirror", global = true, value_name = "FROM=TO")]
    pub mirrors: Vec<String>,

    /// Use only the download cache; fail naming every artifact it lacks.
    #[arg(long, global = true)]
    pub offline: bool,

    /// Where intermediate trees are built (the shared tree, each node's tree).
    #[arg(
        long,
        global = true,
        env = "IMGBUILD_BUILD_DIR",
        default_value = "build",
        value_name = "DIR"
    )]
    pub build_dir: PathBuf,

    /// Where finished images go: DIR/<node>/.
    #[arg(
        long,
        global = true,
        env = "IMGBUILD_IMAGES",
        default_value = "images",
        value_name = "DIR"
    )]
    pub images: PathBuf,

    /// Downloads to run at once.
    #[arg(short, long, global = true, default_value_t = 4, value_name = "N")]
    pub jobs: usize,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what imgbuild would build for one node: identity, wiring, units and artifacts.
    Plan {
        /// The node, as named under `nodes:` in the recipe.
        node: String,
        /// Print the plan as JSON (schema documented in docs/plan-json.md).
        #[arg(long)]
        json: bool,
    },
    /// Check a recipe without building anything; prints warnings and errors.
    Validate,
    /// Download and verify every artifact the recipe needs into the cache.
    Fetch,
    /// Resolve every artifact and write the lock file next to the recipe (<recipe>.lock.json).
    Lock,
    /// Compose NODE's root filesystem and write it as a deterministic tarball.
    Rootfs {
        node: String,
        /// Output file (default: images/NODE/rootfs.tar).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Build the images of NODE... (or `all`) into images/<node>/: raw GPT disk, qcow2, seed,
    /// bmap, manifest.json, SBOM, provenance, SHA256SUMS. `imgbuild NODE...` is the same.
    Build {
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
        /// Rebuild even nodes whose images already match their inputs.
        #[arg(long)]
        force: bool,
        /// List which nodes would be rebuilt and why (what changed since their images were
        /// built); build nothing (inputs not in the cache are still downloaded).
        #[arg(long)]
        dry_run: bool,
        /// Print the result as JSON on stdout (schema imgbuild.build/1, docs/output-json.md).
        #[arg(long)]
        json: bool,
    },
    /// Re-check images/NODE/: SHA256SUMS, the bmap's block checksums and the manifest.
    Verify {
        #[arg(required = true, value_name = "NODE")]
        nodes: Vec<String>,
        /// Print the result as JSON on stdout (schema imgbuild.verify/1, docs/output-json.md).
        #[arg(long)]
        json: bool,
    },
    /// Boot images/NODE/ in QEMU (UEFI, snapshot mode: the image never changes), serial
    /// console on this terminal and in a log file.
    Boot(BootArgs),
    /// Boot the cluster (or NODE...) in QEMU on one private virtual network, show each node's
    /// health as its imgbuild-health unit reports it on the serial console; Ctrl-C stops all.
    Up(UpArgs),
    /// Stop VMs an interrupted `imgbuild up` left running.
    Down,
    /// Log into NODE of the cluster `imgbuild up` is running (QEMU or containers): ssh from
    /// inside up's private network namespace, where the host has an address of its own on the
    /// nodes' network. Needs root, like `up`.
    Ssh {
        node: String,
        /// The private key (default: BUILD_DIR/ssh/id_ed25519 when it exists, as `make demo`
        /// makes it, else ssh's own defaults).
        #[arg(short = 'i', long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The user (default: the recipe's first user with an SSH key).
        #[arg(short = 'l', long, value_name = "NAME")]
        user: Option<String>,
        /// The command to run on the node (after `--`); none: an interactive shell.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Write NODE's raw image onto a disk: checks the target first (whole disk, unused, not the
    /// running system's, big enough), writes only the bmap's mapped ranges and reads each back,
    /// and writes the partition table last.
    Flash(FlashArgs),
    /// Bring a running node to the image `imgbuild build` made, keeping its data: the new root
    /// filesystem goes into the other root slot (mapped blocks only, verified on the node by
    /// SHA-256), GRUB tries it once, and the node keeps it only when its own health passes; else it
    /// goes back to the previous slot by itself. Exit 1 naming what failed and which slot runs.
    Update(UpdateArgs),
    /// Roll the running cluster to its new images one node at a time (QEMU or metal nodes, over
    /// SSH): nodes whose image differs, leaders last; before and after each node the cluster's
    /// gates (nodes answer, no under-replicated / under- or at-min-ISR / unavailable partition,
    /// ZooKeeper quorum with one leader, KRaft voters caught up, supervisors registered,
    /// topologies ACTIVE) and after it the node's (back in every ISR, its health whole). The
    /// first gate that does not pass in time stops the roll, naming node, gate and what it saw;
    /// `roll` again continues.
    Roll(RollArgs),
    /// Make the running cluster hold the recipe's topics (services.kafka.topics) and its users'
    /// ACLs: read them through a Kafka node (over SSH, as the node), print the difference as a
    /// plan (create, change, and what it will not do), make it, read the cluster back. A topic
    /// or ACL the recipe does not name is kept unless --allow-delete; fewer partitions or
    /// another replication factor is refused (then nothing changes). Exit 1 on a refusal.
    Apply(ApplyArgs),
    /// Submit a Storm topology directory (the layout of examples/python-wordcount: Flux's
    /// topology.yaml, one .properties file, multilang/resources/) from this machine: copied to
    /// a Storm node, its jar built there with what the image holds, its Kafka settings made the
    /// cluster's (kafka.bootstrap, kafka.client.config), `storm jar`, then waited for until
    /// ACTIVE; prints its name. `--kill NAME` kills one instead.
    Submit(SubmitArgs),
    /// List the topologies the cluster runs (name, status, tasks, workers, uptime).
    Topologies {
        /// The private key (default: BUILD_DIR/ssh/id_ed25519 when it exists).
        #[arg(short = 'i', long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// The user (default: the recipe's first user with sudo and an SSH key).
        #[arg(short = 'l', long)]
        user: Option<String>,
    },
    /// Write the cluster's Prometheus scrape configuration and alert rules (prometheus.yml,
    /// rules.yml) from the recipe into IMAGES/prometheus/ (`build` writes them too); nothing with
    /// metrics off.
    Prometheus {
        /// Another directory to write them to.
        #[arg(short, long, value_name = "DIR")]
        output: Option<PathBuf>,
    },
    /// Inspect or fill the download cache.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
    /// Print a shell completion script, e.g. `imgbuild completions bash >
    /// /etc/bash_completion.d/imgbuild`.
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `imgbuild man > /usr/local/share/man/man1/imgbuild.1`.
    Man,
    /// `imgbuild NODE...`: build those nodes' images (see `build`).
    #[command(external_subcommand)]
    Nodes(Vec<String>),
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Add files whose digest matches an artifact of the recipe (the air-gapped path).
    Import {
        /// Files copied from a machine that could download them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List cached artifacts (stdout: name, version, size, sha256, URL).
    List,
    /// Remove everything the recipe (and its lock file) no longer needs.
    Prune,
}

/// `imgbuild boot NODE` (see [`Command::Boot`]).
#[derive(Debug, Args)]
pub struct BootArgs {
    pub node: String,
    /// Guest memory in MiB (default: the node's memory budget, see `imgbuild plan`).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub cpus: u32,
    /// Do not show the console: wait for cloud-init to finish, check the hostname and address
    /// the console shows against the plan, power off. Exit 1 when a check fails.
    #[arg(long)]
    pub check: bool,
    /// Give up after this many seconds (with --check).
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub timeout: u64,
    /// The serial log (default: BUILD_DIR/boot/NODE/serial.log).
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Boot with Secure Boot enforced: OVMF with Microsoft's keys enrolled, q35 with SMM.
    /// With --check, the kernel must report Secure Boot enabled.
    #[arg(long)]
    pub secure_boot: bool,
    /// Boot on a virtual disk of this size (a throwaway overlay over the image, e.g. 16GiB;
    /// default: twice the image plus 2 GiB), as on a real disk: root slot B and the data
    /// partition are made on it at first boot.
    #[arg(long, value_name = "SIZE")]
    pub disk_size: Option<String>,
    /// The virtual NIC's QEMU model: virtio-net-pci, or e1000e to see the names bare-metal
    /// NICs get (enpXsY).
    #[arg(long, default_value = "virtio-net-pci", value_name = "MODEL")]
    pub nic: String,
}

/// `imgbuild up [NODE...]` (see [`Command::Up`]).
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Nodes to boot (default: all).
    pub nodes: Vec<String>,
    /// Guest memory per VM in MiB (default: each node's memory budget, see `imgbuild plan`).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u32>,
    /// CPUs per VM (default: 1 each for a cluster of VMs; 2 for the mixed runtime's VM, which
    /// has the host's cores mostly to itself).
    #[arg(long, value_name = "N")]
    pub cpus: Option<u32>,
    /// Stop once every node has reported (or at the timeout), judge the cluster — one
    /// ZooKeeper leader, every Kafka voter seen, a Storm nimbus leader and every supervisor —
    /// and exit 1 naming each failed node and check.
    #[arg(long)]
    pub check: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 1800, value_name = "SECS")]
    pub timeout: u64,
    /// Boot every VM with Secure Boot enforced (OVMF with Microsoft's keys enrolled).
    #[arg(long)]
    pub secure_boot: bool,
    /// qemu: each node's image in a VM (boot chain, kernel and all; slow without KVM).
    /// container: each node's tree under systemd-nspawn at native speed; with --check also
    /// proves the data path (Kafka round trip) and the loss and return of a node.
    #[arg(long, value_enum, default_value = "qemu")]
    pub runtime: crate::vm::cluster::Runtime,
    /// With --check in containers: leave out the loss and return of a node (minutes), checking
    /// the data path, the refusals and the topology only.
    #[arg(long)]
    pub no_node_loss: bool,
    /// A check to report but not judge (repeatable), e.g. `--ignore kafka` where the real
    /// broker cannot start within the time under software emulation.
    #[arg(long, value_name = "CHECK")]
    pub ignore: Vec<String>,
    /// Print the checks, phases and judgement as JSON on stdout (schema imgbuild.up/1,
    /// docs/output-json.md); the human report goes to stderr.
    #[arg(long)]
    pub json: bool,
    /// Boot NODE's image in QEMU among the other nodes' containers (repeatable; the rest run
    /// as containers): the mixed runtime, which puts the booted image in the data path. The
    /// check logs into the VM over SSH as the recipe's sudo user.
    #[arg(long, value_name = "NODE")]
    pub vm: Vec<String>,
    /// With --check in containers (mixed or not): also a network partition, one container
    /// node cut off from the others while a producer writes with acks=all, then healed (no
    /// acknowledged message lost, its broker out of the ISR and back, no second KRaft leader).
    #[arg(long)]
    pub partition: bool,
    /// With --check: once the checks pass, keep the cluster (and the Python topology) up until
    /// interrupted, for `imgbuild roll` (which swaps a container node's tree through it); then
    /// check the topology's counts again and stop.
    #[arg(long, requires = "check")]
    pub stay: bool,
}

impl UpArgs {
    pub fn options(&self) -> crate::vm::cluster::UpOptions {
        crate::vm::cluster::UpOptions {
            memory: self.memory,
            cpus: self.cpus.unwrap_or(if self.vm.is_empty() { 1 } else { 2 }),
            check: self.check,
            secure_boot: self.secure_boot,
            runtime: if self.vm.is_empty() {
                self.runtime
            } else {
                crate::vm::cluster::Runtime::Container
            },
            vms: self.vm.clone(),
            partition: self.partition,
            stay: self.stay,
            ignore: self.ignore.clone(),
            no_node_loss: self.no_node_loss,
            json: self.json,
            timeout: std::time::Duration::from_secs(self.timeout),
        }
    }
}

/// `imgbuild update NODE` (see [`Command::Update`]).
#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub node: String,
    /// The node's address, where it is not the plan's (a machine reached on another network).
    /// Without it, a node of a running `imgbuild up` or `boot` is reached inside its network, any
    /// other at the plan's address.
    #[arg(long, value_name = "ADDR")]
    pub host: Option<String>,
    /// Say what would change (the build inputs that differ) and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up waiting for the node's verdict after this many seconds (the node still decides).
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// The private key (default: BUILD_DIR/ssh/id_ed25519 when it exists).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The user (default: the recipe's first user with sudo and an SSH key).
    #[arg(short = 'l', long)]
    pub user: Option<String>,
}

/// `imgbuild roll [NODE...]` (see [`Command::Roll`]).
#[derive(Debug, Args)]
pub struct RollArgs {
    /// The nodes to consider (default: every node; those already on their image are left alone).
    pub nodes: Vec<String>,
    /// Print the order and the gates, as they stand now, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also print a JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
    /// Instead of rolling: once every broker runs the recipe's Kafka release, raise the
    /// cluster's feature levels (metadata.version and the others, not kraft.version) to that
    /// release's. Cannot be undone. With --dry-run: validated only.
    #[arg(long)]
    pub finalize: bool,
    /// Once the roll is done (or when there is nothing to roll): kill the image's example
    /// topology (examples/python-wordcount) and submit it again from the new image, waiting
    /// until it is ACTIVE. For a Storm upgrade across major releases, whose topologies must be
    /// resubmitted.
    #[arg(long, conflicts_with = "finalize")]
    pub resubmit_example: bool,
    /// How long each gate may take to pass before the roll stops, in seconds.
    #[arg(long, default_value_t = 900)]
    pub gate_timeout: u64,
    /// How long each node's update may wait for the node's verdict, in seconds.
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
    /// The private key (default: BUILD_DIR/ssh/id_ed25519 when it exists).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The user (default: the recipe's first user with sudo and an SSH key).
    #[arg(short = 'l', long)]
    pub user: Option<String>,
}

/// `imgbuild submit DIR | --kill NAME` (see [`Command::Submit`]).
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The topology's directory.
    #[arg(required_unless_present = "kill", conflicts_with = "kill")]
    pub dir: Option<PathBuf>,
    /// Kill the running topology NAME (and wait until Storm no longer lists it).
    #[arg(long, value_name = "NAME")]
    pub kill: Option<String>,
    /// The private key (default: BUILD_DIR/ssh/id_ed25519 when it exists).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The user (default: the recipe's first user with sudo and an SSH key).
    #[arg(short = 'l', long)]
    pub user: Option<String>,
}

/// `imgbuild apply` (see [`Command::Apply`]).
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also delete the topics and remove the ACLs the recipe does not name (each is named in
    /// the plan first).
    #[arg(long)]
    pub allow_delete: bool,
    /// The private key (default: BUILD_DIR/ssh/id_ed25519 when it exists).
    #[arg(short = 'i', long, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The user (default: the recipe's first user with sudo and an SSH key).
    #[arg(short = 'l', long)]
    pub user: Option<String>,
}

/// `imgbuild flash NODE DEVICE` (see [`Command::Flash`]).
#[derive(Debug, Args)]
pub struct FlashArgs {
    pub node: String,
    /// The target: a block device such as /dev/sdb (or a file, with --to-file).
    pub device: PathBuf,
    /// Do not ask: the device is the right one.
    #[arg(long)]
    pub yes: bool,
    /// Show the target and what would be written where; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Allow a regular file as the target (created if missing).
    #[arg(long)]
    pub to_file: bool,
    /// The raw image (default: images/NODE/NODE.raw).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Its bmap (default: the image's .bmap beside it; without one, every block is written).
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// Erase a data partition of another node or cluster (or one that is not imgbuild's) on the
    /// target instead of refusing; this node's own data partition is always kept.
    #[arg(long)]
    pub wipe_data: bool,
}
