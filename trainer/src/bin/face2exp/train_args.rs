//! `face2exp train`'s flags: each overrides one field of the `--config` file's TrainConfig.

use std::path::PathBuf;

use clap::Args;
use face2exp_trainer::model::{Arch, Stem};
use face2exp_trainer::train::{Feedback, Method, RunOptions, TrainConfig};

/// Flags override the `--config` file, which overrides the defaults.
#[derive(Args)]
pub struct TrainArgs {
    /// TOML file with any TrainConfig field; flags override it. A run folder's config.toml is
    /// a complete example.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Run folder: config.toml, checkpoint, metrics.jsonl, plots, best weights.
    #[arg(long)]
    out: PathBuf,
    /// Continue the run in --out from its last checkpoint (bit-for-bit).
    #[arg(long)]
    resume: bool,
    #[arg(long, value_enum)]
    method: Option<Method>,
    /// Labeled FER data, e.g. imagefolder:../shared/data/fer2013/train
    #[arg(long)]
    labeled: Option<String>,
    /// Unlabeled face images for Meta-Face2Exp, e.g. folder:../shared/data/lfw
    #[arg(long)]
    unlabeled: Option<String>,
    /// Validation data, evaluated every --eval-every steps.
    #[arg(long)]
    val: Option<String>,
    /// Training steps (of the meta phase for --method meta).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long)]
    batch_size: Option<usize>,
    /// Use this fraction of the labeled data, e.g. 0.1.
    #[arg(long)]
    labeled_fraction: Option<f64>,
    /// Make the labeled subset class-balanced (same count per class where possible).
    #[arg(long)]
    balanced: bool,
    /// Draw labeled batches class-balanced instead of by shuffled epochs; the default for
    /// --method meta, whose L_s batches the paper draws this way. On a stratified 10 % of
    /// FER2013 it lowered SL's per-class std by 4.2 points on its own (four seeds), more than
    /// Meta-Face2Exp's whole gain there (docs/RESULTS_NATURAL.md).
    #[arg(long, conflicts_with = "no_balanced_sampler")]
    balanced_sampler: bool,
    /// Draw labeled batches by shuffled epochs, the data's own class mix, also for --method
    /// meta. That was Meta's default until 2026-12-07; the older commands in docs/ pass it.
    #[arg(long)]
    no_balanced_sampler: bool,
    /// Reuse the labeled subset listed in this file (a run's subset.txt).
    #[arg(long)]
    subset_list: Option<PathBuf>,
    /// resnet18, resnet34 or resnet50.
    #[arg(long)]
    arch: Option<Arch>,
    /// imagenet (7x7/2 conv + max pool) or small (3x3/1 conv, no pool).
    #[arg(long)]
    stem: Option<Stem>,
    /// Square input side in pixels (48..224 typical).
    #[arg(long)]
    input_size: Option<usize>,
    /// Start from a torchvision/timm checkpoint saved as safetensors.
    #[arg(long)]
    init: Option<PathBuf>,
    /// Peak learning rate of B (SL: of the only network).
    #[arg(long)]
    lr: Option<f64>,
    /// Peak learning rate of the adaptation network A.
    #[arg(long)]
    lr_adaptation: Option<f64>,
    #[arg(long)]
    warmup_steps: Option<u64>,
    #[arg(long)]
    weight_decay: Option<f64>,
    #[arg(long)]
    label_smoothing: Option<f64>,
    /// Probability of erasing a random rectangle (2-33 % of the area, filled with the mean
    /// colour) of each labeled training image, as torchvision's RandomErasing; 0 = off.
    #[arg(long)]
    random_erasing: Option<f32>,
    /// Keep an EMA of B's weights with this decay (e.g. 0.999); eval/export use it.
    #[arg(long)]
    ema: Option<f64>,
    /// BatchNorm normalises with its running statistics in training too and never updates
    /// them (its weight and bias still learn): for fine-tuning from --init with small
    /// batches; removes the BatchNorm offset of `--feedback official`.
    #[arg(long)]
    freeze_bn: bool,
    #[arg(long)]
    seed: Option<u64>,
    /// cpu or cuda:N (CUDA needs a build with --features cuda).
    #[arg(long)]
    device: Option<String>,
    #[arg(long)]
    eval_every: Option<u64>,
    #[arg(long)]
    checkpoint_every: Option<u64>,
    #[arg(long)]
    log_every: Option<u64>,
    /// Decoding/augmentation worker threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Meta-Face2Exp: unlabeled batch = mu x labeled batch.
    #[arg(long)]
    mu: Option<usize>,
    /// Meta-Face2Exp: how the feedback coefficient f is computed.
    #[arg(long, value_enum)]
    feedback: Option<Feedback>,
    /// Meta-Face2Exp: pseudo-label confidence threshold.
    #[arg(long)]
    threshold: Option<f64>,
    /// Meta-Face2Exp: weight of the consistency loss after ramp-up.
    #[arg(long)]
    lambda_u: Option<f64>,
    /// Meta-Face2Exp: steps of the lambda_u ramp-up.
    #[arg(long)]
    uda_steps: Option<u64>,
    /// Meta-Face2Exp: fine-tune B on the labeled data for this many steps afterwards.
    #[arg(long)]
    finetune_steps: Option<u64>,
    /// Meta-Face2Exp ablation: compute and log f (as f_raw) but apply f = 0, so B learns from
    /// L_s + L_c alone; everything else, every random draw included, stays as without it.
    #[arg(long)]
    zero_feedback: bool,
    /// Meta-Face2Exp: subtract a moving average of f from f, decaying by this factor per step
    /// (in [0, 1); MPL-pytorch, which the official code builds on, has it commented out with
    /// 0.99). Only f's deviations from its recent mean then reach B, not a steady sign.
    #[arg(long, value_name = "DECAY")]
    feedback_baseline_decay: Option<f64>,
    /// Meta-Face2Exp: correct that moving average for its start at 0 (divide by
    /// 1 - DECAY^step, as Adam corrects its moments), so it is the mean of the f seen so far.
    /// Without it f's early mean reaches B almost whole for about 1 / (1 - DECAY) steps.
    #[arg(long)]
    feedback_baseline_debias: bool,
    /// Meta-Face2Exp: clamp the raw f (logged as f_raw) to [-CLIP, CLIP] before the baseline
    /// and --feedback-scale; the share of clamped steps is logged as f_clamped. Now and then
    /// A's steps hurt its labeled loss far more than usual (f_raw averaging -0.7 to -3.5 over
    /// ten steps, where its per-step spread is about 0.01 at --lr-adaptation 1e-2), and at
    /// factor 10 such a stretch drove B to one class (docs/RESULTS_JUDGE.md). With
    /// --feedback-scale 25 and --judge-statistics running, CLIP 0.02 ended B +0.40 points of
    /// mean per-class accuracy (+0.62 overall) above f = 0 over seven 800-step seeds.
    #[arg(long, value_name = "CLIP")]
    feedback_clip: Option<f64>,
    /// Meta-Face2Exp: bound the leaky sum of the f that reaches B (after --feedback-clip and
    /// the baseline, before --feedback-scale) to [-BUDGET, BUDGET]: each step's f is cut so
    /// that |DECAY * sum + f| <= BUDGET. A lone step may use the whole budget, a run of one
    /// sign only BUDGET * (1 - DECAY) per step. The share of cut steps is logged as
    /// f_run_bounded, the sum as f_run_sum. Tried once (factor 25, BUDGET 0.2 with
    /// --feedback-clip 0.05) it barely acted, and B's early dip came from f of both signs,
    /// which --feedback-clip 0.02 stopped (docs/RESULTS_JUDGE.md).
    #[arg(long, value_name = "BUDGET")]
    feedback_run_budget: Option<f64>,
    /// Meta-Face2Exp: the share of that sum each step carries on, in [0, 1) (default 0.9).
    #[arg(long, value_name = "DECAY")]
    feedback_run_decay: Option<f64>,
    /// Meta-Face2Exp: scale A's L_u gradient down to this L2 norm (over all of A's parameters)
    /// where it is larger, as torch.nn.utils.clip_grad_norm_; the norm is logged as
    /// grad_norm_u, the share of clipped steps as grad_clipped_u. One A step on an unusual
    /// batch raised its running-statistics labeled loss from 2.5 to 11.7 and, through f, sent
    /// B to one class (docs/RESULTS_JUDGE.md).
    #[arg(long, value_name = "NORM")]
    adaptation_grad_clip: Option<f64>,
    /// Meta-Face2Exp, not in the paper: distribution alignment (ReMixMatch). B's pseudo
    /// distribution on the unlabeled faces is multiplied by uniform / its running mean
    /// (decaying by DECAY per step, in [0, 1); 0.999 follows about the last thousand
    /// batches) and renormalised, before the mask, L_c and the hard labels A learns from, so
    /// every class is proposed about equally often. The running mean's largest / smallest
    /// class share is logged as pseudo_imbalance. At 0.99 on 10 % of FER2013 + LFW it raised
    /// A's mean per-class accuracy and cut A's std by about 5 points at two of four seeds,
    /// but never moved B beyond seed noise (docs/RESULTS_ALIGNMENT.md).
    #[arg(long, value_name = "DECAY")]
    distribution_alignment: Option<f64>,
    /// Meta-Face2Exp: multiply f (after the baseline) by this factor; 1, the default, is the
    /// paper's f. f = eta_A * <g', d> is about 1 % of L_s at eta_A 1e-2 (docs/RESULTS_FEEDBACK.md),
    /// so this sets L_f's weight apart from A's learning rate. Logged f is the scaled one.
    /// Large factors destabilise B: 25 (with --feedback-baseline-decay 0.99) drove it to one
    /// class within 200 steps there, with either --judge-statistics and with
    /// --feedback-baseline-debias (docs/RESULTS_JUDGE.md).
    #[arg(long, value_name = "FACTOR")]
    feedback_scale: Option<f64>,
    /// Meta-Face2Exp (exact, taylor): BatchNorm statistics A is judged with for f. batch (the
    /// labeled batch's own, as the official code) or running (A's, as eval sees it; A judged
    /// with batch statistics was overconfident in docs/RESULTS_PROBE.md, which makes any step
    /// that lowers its confidence, wrong labels included, look helpful).
    #[arg(long, value_enum)]
    judge_statistics: Option<face2exp_trainer::train::JudgeStatistics>,
    /// Meta-Face2Exp, with --judge-statistics running: also log A's labeled loss before its
    /// step (loss_judge_start) and with its old weights but the running statistics its
    /// strong-view batch has just moved (loss_judge_stats), to tell which of the two moves
    /// loss_judge. Two more eval-mode forwards of A on the labeled batch per step.
    #[arg(long)]
    log_judge_shift: bool,
    /// Central fraction of each unlabeled image kept (LFW: about 0.5).
    #[arg(long)]
    unlabeled_center_crop: Option<f32>,
    /// No progress bars (logs only).
    #[arg(long)]
    quiet: bool,
}

impl TrainArgs {
    pub fn into_config(self) -> anyhow::Result<(TrainConfig, RunOptions)> {
        let mut c = match &self.config {
            Some(path) => TrainConfig::from_toml_file(path)?,
            None => TrainConfig::default(),
        };
        macro_rules! set {
            ($flag:expr => $($field:tt)+) => {
                if let Some(v) = $flag {
                    c.$($field)+ = v;
                }
            };
        }
        set!(self.method => method);
        set!(self.labeled => labeled);
        set!(self.unlabeled.map(Some) => unlabeled);
        set!(self.val.map(Some) => val);
        set!(self.steps => steps);
        set!(self.batch_size => batch_size);
        set!(self.labeled_fraction => labeled_fraction);
        set!(self.subset_list.map(Some) => subset_list);
        set!(self.arch => model.arch);
        set!(self.stem => model.stem);
        set!(self.input_size => model.input_size);
        set!(self.init.map(Some) => model.init);
        set!(self.lr => schedule.lr);
        set!(self.lr_adaptation => meta.adaptation_schedule.lr);
        set!(self.weight_decay => sgd.weight_decay);
        set!(self.label_smoothing => label_smoothing);
        set!(self.random_erasing => random_erasing);
        set!(self.ema.map(Some) => ema_decay);
        set!(self.seed => seed);
        set!(self.device => device);
        set!(self.eval_every => eval_every);
        set!(self.checkpoint_every => checkpoint_every);
        set!(self.log_every => log_every);
        set!(self.workers => workers);
        set!(self.mu => meta.mu);
        set!(self.feedback => meta.feedback);
        set!(self.threshold => meta.threshold);
        set!(self.lambda_u => meta.lambda_u);
        set!(self.uda_steps => meta.uda_steps);
        set!(self.finetune_steps => meta.finetune_steps);
        set!(self.feedback_baseline_decay.map(Some) => meta.feedback_baseline_decay);
        set!(self.feedback_scale => meta.feedback_scale);
        set!(self.feedback_clip.map(Some) => meta.feedback_clip);
        set!(self.feedback_run_budget.map(Some) => meta.feedback_run_budget);
        set!(self.feedback_run_decay => meta.feedback_run_decay);
        set!(self.adaptation_grad_clip.map(Some) => meta.adaptation_grad_clip);
        set!(self.distribution_alignment.map(Some) => meta.distribution_alignment);
        set!(self.judge_statistics => meta.judge_statistics);
        set!(self.unlabeled_center_crop => unlabeled_center_crop);
        if let Some(w) = self.warmup_steps {
            c.schedule.warmup_steps = w;
            c.meta.adaptation_schedule.warmup_steps = w;
        }
        c.meta.feedback_baseline_debias |= self.feedback_baseline_debias;
        c.balanced |= self.balanced;
        if self.balanced_sampler {
            c.balanced_sampler = Some(true);
        }
        if self.no_balanced_sampler {
            c.balanced_sampler = Some(false);
        }
        c.model.freeze_batch_norm |= self.freeze_bn;
        c.meta.zero_feedback |= self.zero_feedback;
        c.meta.log_judge_shift |= self.log_judge_shift;
        let options = RunOptions {
            out: self.out,
            resume: self.resume,
            stop_after: None,
            progress: !self.quiet,
        };
        Ok((c, options))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::Parser;

    fn train_config(args: &[&str]) -> TrainConfig {
        let cli = Cli::try_parse_from(["face2exp", "train", "--out", "run"].iter().chain(args))
            .expect("the flags parse");
        match cli.command {
            Command::Train(args) => args.into_config().expect("a valid config").0,
            _ => unreachable!("parsed a train command"),
        }
    }

    #[test]
    fn balanced_sampler_flags_override_the_methods_default() {
        let meta = ["--method", "meta"];
        let draws_balanced = |args: &[&str]| train_config(args).draws_balanced_batches();
        assert!(draws_balanced(&meta));
        assert!(!draws_balanced(
            &[&meta[..], &["--no-balanced-sampler"]].concat()
        ));
        assert!(!draws_balanced(&["--method", "sl"]));
        assert!(draws_balanced(&["--method", "sl", "--balanced-sampler"]));
        let both = ["face2exp", "train", "--out", "run"]
            .into_iter()
            .chain(["--balanced-sampler", "--no-balanced-sampler"]);
        let err = Cli::try_parse_from(both)
            .err()
            .expect("the two flags conflict");
        assert!(err.to_string().contains("--no-balanced-sampler"), "{err}");
    }

    #[test]
    fn zero_feedback_flag_sets_the_ablation_and_defaults_to_off() {
        assert!(!train_config(&[]).meta.zero_feedback);
        assert!(train_config(&["--zero-feedback"]).meta.zero_feedback);
    }

    #[test]
    fn baseline_flag_sets_the_decay_and_defaults_to_none() {
        assert_eq!(train_config(&[]).meta.feedback_baseline_decay, None);
        let c = train_config(&["--feedback-baseline-decay", "0.99"]);
        assert_eq!(c.meta.feedback_baseline_decay, Some(0.99));
        assert!(!c.meta.feedback_baseline_debias);
        let c = train_config(&[
            "--feedback-baseline-decay",
            "0.99",
            "--feedback-baseline-debias",
        ]);
        assert!(c.meta.feedback_baseline_debias);
    }

    #[test]
    fn clip_flags_set_their_bounds_and_default_to_none() {
        let defaults = train_config(&[]).meta;
        assert_eq!(defaults.feedback_clip, None);
        assert_eq!(defaults.adaptation_grad_clip, None);
        let c = train_config(&["--feedback-clip", "0.05", "--adaptation-grad-clip", "5"]).meta;
        assert_eq!(c.feedback_clip, Some(0.05));
        assert_eq!(c.adaptation_grad_clip, Some(5.0));
    }

    #[test]
    fn distribution_alignment_is_off_by_default_and_takes_a_decay() {
        assert_eq!(train_config(&[]).meta.distribution_alignment, None);
        let c = train_config(&["--distribution-alignment", "0.999"]).meta;
        assert_eq!(c.distribution_alignment, Some(0.999));
    }

    #[test]
    fn run_bound_flags_set_the_budget_and_decay() {
        let defaults = train_config(&[]).meta;
        assert_eq!(defaults.feedback_run_budget, None);
        assert_eq!(defaults.feedback_run_decay, 0.9);
        let c = train_config(&[
            "--feedback-run-budget",
            "0.1",
            "--feedback-run-decay",
            "0.8",
        ])
        .meta;
        assert_eq!(c.feedback_run_budget, Some(0.1));
        assert_eq!(c.feedback_run_decay, 0.8);
    }

    #[test]
    fn judge_statistics_flag_defaults_to_batch() {
        use face2exp_trainer::train::JudgeStatistics;
        assert_eq!(
            train_config(&[]).meta.judge_statistics,
            JudgeStatistics::Batch
        );
        let c = train_config(&["--feedback", "exact", "--judge-statistics", "running"]);
        assert_eq!(c.meta.judge_statistics, JudgeStatistics::Running);
    }

    #[test]
    fn judge_shift_flag_sets_the_log_and_defaults_to_off() {
        assert!(!train_config(&[]).meta.log_judge_shift);
        let c = train_config(&["--judge-statistics", "running", "--log-judge-shift"]);
        assert!(c.meta.log_judge_shift);
    }

    #[test]
    fn scale_flag_sets_the_factor_and_defaults_to_one() {
        assert_eq!(train_config(&[]).meta.feedback_scale, 1.0);
        assert_eq!(
            train_config(&["--feedback-scale", "25"])
                .meta
                .feedback_scale,
            25.0
        );
    }

    #[test]
    fn flags_override_the_meta_settings() {
        let c = train_config(&[
            "--lr-adaptation",
            "0.01",
            "--mu",
            "2",
            "--feedback",
            "exact",
        ]);
        assert_eq!(c.meta.adaptation_schedule.lr, 0.01);
        assert_eq!(c.meta.mu, 2);
        assert_eq!(c.meta.feedback, Feedback::Exact);
    }
}
