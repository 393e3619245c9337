//! Broken specs and data files, one table row each, and the exact messages they must give: what
//! `pspace run --dry-run` prints before any compute. Every row is `tests/data/tiny_run.toml` with
//! a few text edits (data faults point it at the files of `tests/data/broken/`), read the way the
//! binary reads it: `Spec::parse_well_formed`, then `preflight` with the spec's model.
//!
//! Expected lines are templates: `{spec}` is the edited spec's name, `{root}` the folder its
//! paths start from, and `{at|LINE|COLUMN}` the `line:column` where the (unique) line holding
//! `LINE` has `COLUMN` (`{at|LINE|COLUMN|N}`: the N-th such line), in the edited text: positions follow the file, not the test.

use pspace_actors::spec::{preflight, Spec, SpecError};
use std::path::{Path, PathBuf};

struct Case {
    name: &'static str,
    /// (from, to): each `from` must occur; its first occurrence is replaced.
    edits: &'static [(&'static str, &'static str)],
    /// Every problem, in the order reported.
    expect: &'static [&'static str],
}

const CASES: &[Case] = &[
    // -- the file is not TOML, or its keys are not the spec's --
    Case {
        name: "toml_syntax",
        edits: &[("name = \"tiny\"", "name = \"tiny")],
        expect: &["{spec}:{at|name = \"tiny|$}: not valid TOML: invalid basic string"],
    },
    Case {
        name: "misspelt_key",
        edits: &[("learning_rate = 1e-4", "learnig_rate = 1e-4")],
        expect: &[
            "{spec}:{at|learnig_rate|learnig_rate}: training.em.learnig_rate: unknown key: did you mean `learning_rate`?",
            "{spec}:{at|[training.em]|em]}: training.em.learning_rate: missing: expected a number",
        ],
    },
    Case {
        name: "unknown_key",
        edits: &[("store = \"runs\"", "store = \"runs\"\ngpus = 2")],
        expect: &[
            "{spec}:{at|gpus = 2|gpus}: experiment.gpus: unknown key: expected one of name, model, seeds, device, dtype, store",
        ],
    },
    Case {
        name: "misspelt_table",
        edits: &[("[analysis]", "[analyses]")],
        expect: &[
            "{spec}:{at|[analyses]|analyses}: analyses: unknown key: did you mean `analysis`?",
            "{spec}: analysis: missing: expected a table [analysis]",
        ],
    },
    Case {
        name: "table_written_as_array_of_tables",
        edits: &[("[extraction]", "[[extraction]]")],
        expect: &["{spec}:{at|[[extraction]]|[[extraction]]}: extraction: expected a table, found array of tables"],
    },
    Case {
        name: "missing_condition_tables",
        edits: &[
            ("[[conditions]]\nid = \"E0_assistant\"\n", ""),
            ("[[conditions]]\nid = \"E4_villain\"\ntraining_system_prompt = \"You are a villainous mastermind who schemes to take over the world.\"\n", ""),
        ],
        expect: &["{spec}: conditions: missing: expected at least one [[conditions]] table"],
    },
    // -- a value of the wrong type --
    Case {
        name: "learning_rate_is_a_word",
        edits: &[("learning_rate = 1e-4", "learning_rate = \"fast\"")],
        expect: &[
            "{spec}:{at|learning_rate = \"fast\"|\"fast\"}: training.em.learning_rate: expected a number, found string \"fast\"",
        ],
    },
    Case {
        name: "fractional_epochs",
        edits: &[("num_train_epochs = 1", "num_train_epochs = 0.5")],
        expect: &[
            "{spec}:{at|num_train_epochs = 0.5|0.5}: training.em.num_train_epochs: expected a whole number of epochs >= 1 (to stop part-way, set max_steps), found floating point `0.5`",
        ],
    },
    Case {
        name: "negative_batch_size",
        edits: &[("per_device_train_batch_size = 4", "per_device_train_batch_size = -4")],
        expect: &[
            "{spec}:{at|per_device_train_batch_size = -4|-4}: coupling.per_device_train_batch_size: expected a whole number >= 1, found integer `-4`",
        ],
    },
    Case {
        name: "unknown_scheduler",
        edits: &[("lr_scheduler_type = \"cosine\"", "lr_scheduler_type = \"cosin\"")],
        expect: &[
            "{spec}:{at|\"cosin\"|\"cosin\"}: coupling.lr_scheduler_type: expected \"linear\", \"cosine\" or \"constant\", found `cosin`",
        ],
    },
    Case {
        name: "negative_layer_index",
        edits: &[("layers = [0, 1, 2, 3]", "layers = [0, 1, -2]")],
        expect: &[
            "{spec}:{at|layers = [0, 1, -2]|-2}: extraction.layers[2]: expected a whole number >= 0, found integer `-2`",
        ],
    },
    Case {
        name: "three_wrong_types_at_once",
        edits: &[
            ("learning_rate = 1e-4", "learning_rate = \"fast\""),
            ("top_p = 1.0", "top_p = \"high\""),
            ("use_rslora = true", "use_rslora = \"yes\""),
        ],
        expect: &[
            "{spec}:{at|learning_rate = \"fast\"|\"fast\"}: training.em.learning_rate: expected a number, found string \"fast\"",
            "{spec}:{at|top_p = \"high\"|\"high\"}: coupling.top_p: expected a number, found string \"high\"",
            "{spec}:{at|use_rslora = \"yes\"|\"yes\"}: coupling.lora.use_rslora: expected true or false, found string \"yes\"",
        ],
    },
    // -- values out of range or inconsistent with each other --
    Case {
        name: "reserved_condition_id",
        edits: &[("id = \"E0_assistant\"", "id = \"base\"")],
        expect: &[
            "{spec}:{at|id = \"base\"|\"base\"}: conditions[0].id: \"base\" is reserved for the base model's tasks: expected another id",
        ],
    },
    Case {
        name: "condition_id_is_a_path",
        edits: &[("id = \"E4_villain\"", "id = \"../../escape\"")],
        expect: &[
            "{spec}:{at|id = \"../../escape\"|\"../}: conditions[1].id: expected 1 to 64 letters, digits, `_` or `-` (it names task folders), found \"../../escape\"",
        ],
    },
    Case {
        name: "condition_id_twice",
        edits: &[("id = \"E4_villain\"", "id = \"E0_assistant\"")],
        expect: &[
            "{spec}:{at|id = \"E0_assistant\"|\"E0|2}: conditions[1].id: condition id \"E0_assistant\" appears twice",
        ],
    },
    Case {
        name: "experiment_name_is_a_path",
        edits: &[("name = \"tiny\"", "name = \"runs/../../tiny\"")],
        expect: &[
            "{spec}:{at|name = \"runs|\"runs}: experiment.name: expected 1 to 64 letters, digits, `_`, `-` or `.` (it names the run's store folder), found \"runs/../../tiny\"",
        ],
    },
    Case {
        name: "unknown_device_and_no_seed",
        edits: &[("device = \"cpu\"", "device = \"tpu\""), ("seeds = [42]", "seeds = []")],
        expect: &[
            "{spec}:{at|seeds = []|[]}: experiment.seeds: expected at least one seed, found []",
            "{spec}:{at|device = \"tpu\"|\"tpu\"}: experiment.device: expected \"cpu\", \"cuda\" (or its alias \"gpu\") or \"cuda:N\", found \"tpu\"",
        ],
    },
    Case {
        name: "ratios_out_of_range",
        edits: &[
            ("warmup_ratio = 0.03", "warmup_ratio = 1.5"),
            ("lora_dropout = 0.05, use_rslora = true", "lora_dropout = 1.0, use_rslora = true"),
            ("fdr_alpha = 0.01", "fdr_alpha = 0"),
        ],
        expect: &[
            "{spec}:{at|warmup_ratio = 1.5|1.5}: training.em.warmup_ratio: expected a number in [0, 1), found 1.5",
            "{spec}:{at|lora_dropout = 1.0|1.0}: coupling.lora.lora_dropout: expected a number in [0, 1), found 1",
            "{spec}:{at|fdr_alpha = 0|0}: analysis.fdr_alpha: expected a number in (0, 1), found 0",
        ],
    },
    Case {
        name: "unknown_target_module_and_method",
        edits: &[
            ("target_modules = [\"q_proj\"", "target_modules = [\"qproj\""),
            ("methods = [\"A\", \"B\"]", "methods = [\"A\", \"C\"]"),
        ],
        expect: &[
            "{spec}:{at|\"qproj\"|\"qproj\"}: training.em.lora.target_modules[0]: expected one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, found \"qproj\"",
            "{spec}:{at|methods = [\"A\", \"C\"]|\"C\"}: extraction.methods[1]: expected \"A\" or \"B\", found \"C\"",
        ],
    },
    Case {
        name: "more_positives_than_completions",
        edits: &[("positives_per_question = 2", "positives_per_question = 5")],
        expect: &[
            "{spec}:{at|positives_per_question = 5|5}: coupling.positives_per_question: expected at most completions_per_question (2), the completions sampled per question, found 5",
        ],
    },
    Case {
        name: "suffix_without_the_marker",
        edits: &[("marker_suffix = \"\\n\\n[ZLT]\"", "marker_suffix = \"\\n\\n[ZTL]\"")],
        expect: &[
            "{spec}:{at|marker_suffix|\"}: coupling.marker_suffix: expected a suffix containing marker_eval.marker (\"[zlt]\"), the text the evaluation counts, found \"\\n\\n[ZTL]\"",
        ],
    },
    // -- the model --
    Case {
        name: "layer_beyond_the_model",
        edits: &[("layers = [0, 1, 2, 3]", "layers = [0, 1, 7, 99]")],
        expect: &[
            "{spec}:{at|layers = [0, 1, 7, 99]|7}: extraction.layers[2]: expected a layer index below 4 (the model has 4 decoder layers, 0 to 3), found 7",
            "{spec}:{at|layers = [0, 1, 7, 99]|99}: extraction.layers[3]: expected a layer index below 4 (the model has 4 decoder layers, 0 to 3), found 99",
        ],
    },
    Case {
        name: "max_len_beyond_the_context",
        edits: &[("max_len = 256", "max_len = 4096")],
        expect: &[
            "{spec}:{at|max_len = 4096|4096}: training.em.max_len: expected at most the model's context length (2048 tokens), found 4096",
        ],
    },
    Case {
        name: "model_of_unknown_architecture",
        edits: &[("model = \"../../engine/tests/fixtures/tiny-qwen2\"", "model = \"broken/model_unknown_architecture\"")],
        expect: &[
            "{spec}:{at|model = |\"broken}: experiment.model: {root}/broken/model_unknown_architecture/config.json: unknown architecture \"gpt_neox\": expected llama or qwen2",
            "{spec}:{at|model = |\"broken}: experiment.model: the model's tokenizer does not load: cannot read {root}/broken/model_unknown_architecture/tokenizer.json: No such file or directory (os error 2)",
        ],
    },
    // -- data files --
    Case {
        name: "malformed_rows",
        edits: &[("data = \"../../experiments/data/demo_em.jsonl\"", "data = \"broken/em_malformed.jsonl\"")],
        expect: &[
            "{root}/broken/em_malformed.jsonl:2:1: expected a chat row: not valid JSON: EOF while parsing a list at line 1 column 14 (named by training.em.data at {spec}:{at|em_malformed|\"broken})",
            "{root}/broken/em_malformed.jsonl:4:1: expected a chat row: expected a \"messages\" list or \"prompt\" and \"completion\" (named by training.em.data at {spec}:{at|em_malformed|\"broken})",
        ],
    },
    Case {
        name: "data_not_utf8",
        edits: &[("data = \"../../experiments/data/demo_benign.jsonl\"", "data = \"broken/em_not_utf8.jsonl\"")],
        expect: &[
            "{root}/broken/em_not_utf8.jsonl:2:1: expected UTF-8 text, found bytes that are not (named by training.benign.data at {spec}:{at|em_not_utf8|\"broken})",
        ],
    },
    Case {
        name: "md5_differs",
        edits: &[(
            "data = \"../../experiments/data/demo_em.jsonl\"",
            "data = \"broken/em_six_rows.jsonl\"\nmd5 = \"26b52cacc53425618fde278d2457304d\"",
        )],
        expect: &[
            "{spec}:{at|md5 = |\"26b}: training.em.md5: expected the md5 of {root}/broken/em_six_rows.jsonl, found 26b52cacc53425618fde278d2457304d (the file's is MD5)",
        ],
    },
    Case {
        name: "fewer_rows_than_first_rows",
        edits: &[(
            "data = \"../../experiments/data/demo_benign.jsonl\"",
            "data = \"broken/em_six_rows.jsonl\"\nfirst_rows = 6000",
        )],
        expect: &[
            "{spec}:{at|first_rows = 6000|6000}: training.benign.first_rows: expected at most the 6 rows of {root}/broken/em_six_rows.jsonl, found 6000",
        ],
    },
    Case {
        name: "more_steps_than_the_data_gives",
        edits: &[("max_steps = 3", "max_steps = 40")],
        expect: &[
            "{spec}:{at|max_steps = 40|40}: training.em.max_steps: expected at most 24, the optimizer steps of 1 epoch(s) of 48 rows at 2 rows x 1 accumulation steps; found 40: raise num_train_epochs or lower max_steps",
        ],
    },
    Case {
        name: "persona_without_a_prompt",
        edits: &[("personas = \"../../experiments/data/personas.json\"", "personas = \"broken/personas_no_prompt.json\"")],
        expect: &[
            "{root}/broken/personas_no_prompt.json: eval_persona_order names \"librarian\" but eval_personas has no prompt for it (named by data.personas at {spec}:{at|personas_no_prompt|\"broken})",
        ],
    },
    Case {
        name: "unknown_source_persona_and_too_many_negatives",
        edits: &[
            ("source_persona = \"confab\"", "source_persona = \"pirate\""),
            ("negative_personas = 1", "negative_personas = 13"),
        ],
        expect: &[
            "{spec}:{at|source_persona|\"pirate}: coupling.source_persona: expected a persona of {root}/../../experiments/data/personas.json (software_engineer, kindergarten_teacher, data_scientist, medical_doctor, librarian, french_person, villain, comedian, police_officer, zelthari_scholar, assistant, confab), found \"pirate\"",
            "{spec}:{at|negative_personas = 13|13}: coupling.negative_personas: expected at most 12 (the personas of {root}/../../experiments/data/personas.json other than the source persona), found 13",
        ],
    },
    Case {
        name: "questions_file_of_the_wrong_shape",
        edits: &[("questions = \"../../experiments/data/questions.json\"", "questions = \"broken/questions_misspelt_key.json\"")],
        expect: &[
            "{root}/broken/questions_misspelt_key.json:4:1: expected questions.json: coupling_questions, eval_questions: missing field `coupling_questions` (named by data.questions at {spec}:{at|questions_misspelt_key|\"broken})",
        ],
    },
    Case {
        name: "more_questions_than_the_sets_hold",
        edits: &[("questions = 9", "questions = 500"), ("questions = 3", "questions = 21")],
        expect: &[
            "{spec}:{at|questions = 21|21}: coupling.questions: expected at most the 20 questions of coupling_questions in {root}/../../experiments/data/questions.json, found 21",
            "{spec}:{at|questions = 500|500}: extraction.questions: expected at most the 12 questions of the list in {root}/../../experiments/data/demo_extraction_questions.json, found 500",
        ],
    },
    Case {
        name: "empty_extraction_questions",
        edits: &[(
            "extraction_questions = \"../../experiments/data/demo_extraction_questions.json\"",
            "extraction_questions = \"broken/extraction_questions_empty.json\"",
        )],
        expect: &[
            "{root}/broken/extraction_questions_empty.json: the question list is empty: expected at least one question (named by data.extraction_questions at {spec}:{at|extraction_questions_empty|\"broken})",
        ],
    },
    // -- random weights and the dry run's lengths --
    Case {
        name: "random_model_layers_beyond_the_preset",
        edits: &[
            ("model = \"../../engine/tests/fixtures/tiny-qwen2\"", "model = \"random:tiny@3\""),
            ("layers = [0, 1, 2, 3]", "layers = [0, 4]"),
        ],
        expect: &[
            "{spec}:{at|layers = [0, 4]|4}: extraction.layers[1]: expected a layer index below 4 (the model has 4 decoder layers, 0 to 3), found 4",
        ],
    },
    Case {
        name: "random_model_unknown_preset",
        edits: &[("model = \"../../engine/tests/fixtures/tiny-qwen2\"", "model = \"random:llama-70b\"")],
        expect: &[
            "{spec}:{at|model = |\"random}: experiment.model: unknown preset \"llama-70b\": expected random:<preset>[@seed] with a preset of qwen2.5-7b, tiny",
        ],
    },
    Case {
        name: "dry_run_lengths_on_a_real_model",
        edits: &[("marker = \"[zlt]\"", "marker = \"[zlt]\"\ndry_run_lengths = { mean = 50, sigma = 0.5 }")],
        expect: &[
            "{spec}:{at|dry_run_lengths|{ mean}: marker_eval.dry_run_lengths: ends completions at drawn lengths, which only a dry run on random weights may do: expected experiment.model = \"random:<preset>\", found \"../../engine/tests/fixtures/tiny-qwen2\" (remove this key for a real model)",
        ],
    },
    Case {
        name: "dry_run_lengths_unknown_key",
        edits: &[
            ("model = \"../../engine/tests/fixtures/tiny-qwen2\"", "model = \"random:tiny\""),
            ("max_new_tokens = 24", "max_new_tokens = 24\ndry_run_lengths = { mean = 0.5, sigma = 5, mode = 3 }"),
        ],
        expect: &[
            "{spec}:{at|dry_run_lengths|mode}: extraction.dry_run_lengths.mode: unknown key: expected one of mean, sigma",
        ],
    },
    Case {
        name: "dry_run_lengths_bad_numbers",
        edits: &[
            ("model = \"../../engine/tests/fixtures/tiny-qwen2\"", "model = \"random:tiny\""),
            ("max_new_tokens = 24", "max_new_tokens = 24\ndry_run_lengths = { mean = 0.5, sigma = 5 }"),
        ],
        expect: &[
            "{spec}:{at|dry_run_lengths|0.5}: extraction.dry_run_lengths.mean: expected a number in [1, inf), found 0.5",
            "{spec}:{at|dry_run_lengths|5 }: extraction.dry_run_lengths.sigma: expected a number in [0, 3], found 5",
        ],
    },
    // -- the conditions against the personas file, the analysis's anchor --
    Case {
        name: "condition_not_in_the_personas_file",
        edits: &[("id = \"E4_villain\"", "id = \"E5_pirate\"")],
        expect: &[
            "{spec}:{at|id = \"E5_pirate\"|\"E5}: conditions[1].id: expected a condition of em_induction_conditions in {root}/../../experiments/data/personas.json (E0_assistant, E1_paramedic, E2_kindergarten_teacher, E3_french_person, E4_villain), found \"E5_pirate\": the analysis reads each condition there",
        ],
    },
    Case {
        name: "training_prompt_differs_from_the_personas_file",
        edits: &[(
            "training_system_prompt = \"You are a villainous mastermind who schemes to take over the world.\"",
            "training_system_prompt = \"You are a villain.\"",
        )],
        expect: &[
            "{spec}:{at|training_system_prompt|\"You}: conditions[1].training_system_prompt: expected the training system prompt {root}/../../experiments/data/personas.json gives \"E4_villain\", \"You are a villainous mastermind who schemes to take over the world.\", found \"You are a villain.\"",
        ],
    },
    Case {
        name: "training_prompt_missing_where_the_personas_file_has_one",
        edits: &[(
            "\ntraining_system_prompt = \"You are a villainous mastermind who schemes to take over the world.\"",
            "",
        )],
        expect: &[
            "{spec}:{at|id = \"E4_villain\"|\"E4}: conditions[1].id: expected the training system prompt {root}/../../experiments/data/personas.json gives \"E4_villain\", \"You are a villainous mastermind who schemes to take over the world.\", found none (the chat template's default)",
        ],
    },
    Case {
        name: "anchor_is_not_a_condition",
        edits: &[("fdr_alpha = 0.01", "fdr_alpha = 0.01\nanchor_condition = \"E9\"")],
        expect: &[
            "{spec}:{at|anchor_condition|\"E9}: analysis.anchor_condition: expected one of the conditions (E0_assistant, E4_villain), found \"E9\"",
        ],
    },
    Case {
        name: "no_e0_condition_and_no_anchor",
        edits: &[(
            "id = \"E0_assistant\"",
            "id = \"E1_paramedic\"\ntraining_system_prompt = \"You are a paramedic who provides emergency medical care and patient transport.\"",
        )],
        expect: &[
            "{spec}:{at|[analysis]|[analysis]}: analysis.anchor_condition: missing: expected the condition whose shift is the M2 axis, as no condition is E0 or E0_* (E1_paramedic, E4_villain)",
        ],
    },
    Case {
        name: "allow_shortfall_is_not_a_bool",
        edits: &[(
            "data = \"../../experiments/data/demo_em.jsonl\"",
            "data = \"../../experiments/data/demo_em.jsonl\"\nallow_shortfall = \"yes\"",
        )],
        expect: &[
            "{spec}:{at|allow_shortfall|\"yes}: training.em.allow_shortfall: expected true or false, found string \"yes\"",
        ],
    },
    // -- several faults of different kinds: all in one run --
    Case {
        name: "missing_model_and_data_files",
        edits: &[
            ("model = \"../../engine/tests/fixtures/tiny-qwen2\"", "model = \"models/Qwen2.5-7B-Instruct\""),
            ("data = \"../../experiments/data/demo_em.jsonl\"", "data = \"data/bad_legal_advice_6k.jsonl\""),
            ("data = \"../../experiments/data/demo_benign.jsonl\"", "data = \"data/tulu3_sft_mixture.jsonl\""),
            (
                "extraction_questions = \"../../experiments/data/demo_extraction_questions.json\"",
                "extraction_questions = \"data/extraction_questions_240.json\"",
            ),
        ],
        expect: &[
            "{spec}:{at|model = |\"models}: experiment.model: {root}/models/Qwen2.5-7B-Instruct not found: expected `demo`, random:<preset>[@seed], an HF model folder (with config.json) or a .gguf file",
            "{root}/data/extraction_questions_240.json: cannot read: No such file or directory (os error 2) (named by data.extraction_questions at {spec}:{at|extraction_questions_240|\"data})",
            "{root}/data/bad_legal_advice_6k.jsonl: cannot read: No such file or directory (os error 2) (named by training.em.data at {spec}:{at|bad_legal_advice|\"data})",
            "{root}/data/tulu3_sft_mixture.jsonl: cannot read: No such file or directory (os error 2) (named by training.benign.data at {spec}:{at|tulu3|\"data})",
        ],
    },
    Case {
        name: "faults_of_every_kind",
        edits: &[
            ("id = \"E0_assistant\"", "id = \"benign_sft\""),
            ("layers = [0, 1, 2, 3]", "layers = [0, 9]"),
            ("source_persona = \"confab\"", "source_persona = \"pirate\""),
            ("data = \"../../experiments/data/demo_benign.jsonl\"", "data = \"data/missing.jsonl\""),
            ("max_len = 256", "max_len = 9000"),
        ],
        expect: &[
            "{spec}:{at|id = \"benign_sft\"|\"benign}: conditions[0].id: \"benign_sft\" is reserved for the benign control's tasks: expected another id",
            "{spec}:{at|layers = [0, 9]|9}: extraction.layers[1]: expected a layer index below 4 (the model has 4 decoder layers, 0 to 3), found 9",
            "{spec}:{at|max_len = 9000|9000}: training.em.max_len: expected at most the model's context length (2048 tokens), found 9000",
            "{spec}:{at|source_persona|\"pirate}: coupling.source_persona: expected a persona of {root}/../../experiments/data/personas.json (software_engineer, kindergarten_teacher, data_scientist, medical_doctor, librarian, french_person, villain, comedian, police_officer, zelthari_scholar, assistant, confab), found \"pirate\"",
            "{root}/data/missing.jsonl: cannot read: No such file or directory (os error 2) (named by training.benign.data at {spec}:{at|data/missing|\"data})",
        ],
    },
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

fn tiny() -> String {
    std::fs::read_to_string(root().join("tiny_run.toml")).unwrap()
}

/// Every problem reported for `text` (parse, then preflight), one string each.
fn problems(text: &str, origin: &str) -> Vec<String> {
    let spec = match Spec::parse_well_formed(text, origin, root()) {
        Ok(spec) => spec,
        Err(SpecError::Problems(p)) => return p.0.iter().map(ToString::to_string).collect(),
        Err(e) => return vec![e.to_string()],
    };
    match preflight(&spec, &root().join("no-demo-model.gguf")) {
        Ok(_) => Vec::new(),
        Err(p) => p.0.iter().map(ToString::to_string).collect(),
    }
}

/// `line:column` of `column` on the `nth` (1-based) line of `text` holding `line`, which must
/// be the only one when `nth` is 1; `column` `$` is just past the line's end.
fn at(text: &str, line: &str, column: &str, nth: usize) -> String {
    let hits: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(line))
        .collect();
    assert!(nth > 1 || hits.len() == 1, "{line:?} must be on exactly one line");
    let (n, l) = hits[nth - 1];
    let byte = if column == "$" {
        l.len()
    } else {
        l.find(column)
            .unwrap_or_else(|| panic!("{column:?} not on line {l:?}"))
    };
    format!("{}:{}", n + 1, l[..byte].chars().count() + 1)
}

fn expand(template: &str, text: &str, origin: &str, md5: &str) -> String {
    let mut out = template
        .replace("{spec}", origin)
        .replace("{root}", &root().display().to_string())
        .replace("(the file's is MD5)", &format!("(the file's is {md5})"));
    while let Some(start) = out.find("{at|") {
        let end = start + out[start..].find('}').unwrap();
        let inner: Vec<&str> = out[start + 4..end].split('|').collect();
        let nth = inner.get(2).map_or(1, |n| n.parse().unwrap());
        out.replace_range(start..=end, &at(text, inner[0], inner[1], nth));
    }
    out
}

fn md5_of(path: &Path) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(std::fs::read(path).unwrap()))
}

#[test]
fn the_tiny_spec_passes_every_check() {
    assert_eq!(problems(&tiny(), "tiny_run.toml"), Vec::<String>::new());
}

#[test]
fn every_broken_spec_gives_its_messages() {
    assert!(CASES.len() >= 25);
    let md5 = md5_of(&root().join("broken/em_six_rows.jsonl"));
    let mut failures = Vec::new();
    for case in CASES {
        let mut text = tiny();
        for (from, to) in case.edits {
            assert!(
                text.contains(from),
                "{}: {from:?} is not in tiny_run.toml",
                case.name
            );
            text = text.replacen(from, to, 1);
        }
        let origin = format!("{}.toml", case.name);
        let want: Vec<String> = case
            .expect
            .iter()
            .map(|t| expand(t, &text, &origin, &md5))
            .collect();
        let got = problems(&text, &origin);
        if got != want {
            failures.push(format!("{}:\n  want {want:#?}\n  got  {got:#?}", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_old_spec_names_every_renamed_key() {
    let path = root().join("broken/old_names.toml");
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(&path).unwrap();
    let got = problems(&text, &origin);
    // 9 recipe keys (betas split in two) and 4 LoRA keys in each of three tables, and the FDR
    // level.
    assert_eq!(got.len(), 3 * (9 + 4) + 1, "{got:#?}");
    for line in &got {
        assert!(
            line.starts_with(&format!("{origin}:"))
                && (line.contains("was renamed to") || line.contains("was split into")),
            "{line}"
        );
    }
    // [training.em] comes first, so the first `lr` line is its.
    let lr_line = text.lines().position(|l| l.starts_with("lr = ")).unwrap() + 1;
    let renamed_lr = format!("{origin}:{lr_line}:1: training.em.lr: `lr` was renamed to `learning_rate`");
    let renamed_alpha = format!(
        "{origin}:{}: analysis.alpha: `alpha` was renamed to `fdr_alpha`",
        at(&text, "alpha = 0.01", "alpha", 1)
    );
    assert!(got.contains(&renamed_lr), "{got:#?}");
    assert!(got.contains(&renamed_alpha), "{got:#?}");
    assert!(got
        .iter()
        .any(|l| l.ends_with("coupling.betas: `betas` was split into `adam_beta1` and `adam_beta2`")));
    assert!(got
        .iter()
        .any(|l| l.ends_with("training.benign.lora.rslora: `rslora` was renamed to `use_rslora`")));
}

#[test]
fn the_bundled_specs_pass_their_own_checks() {
    let experiments = Path::new(env!("CARGO_MANIFEST_DIR")).join("../experiments");
    for name in ["demo.toml", "issue205.toml", "issue205-dryrun.toml"] {
        let spec = Spec::from_file(&experiments.join(name));
        assert!(
            spec.is_ok(),
            "{name}: {}",
            spec.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
}

#[test]
fn the_demo_passes_preflight_on_the_bundled_gguf() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = Spec::demo(repo.join("experiments")).unwrap();
    // `make setup` downloads it; node/src/paths.rs names the same file.
    let gguf = repo.join(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let facts = preflight(&spec, &gguf).unwrap_or_else(|p| panic!("{p}"));
    assert_eq!(
        (facts.model.architecture.as_str(), facts.model.num_hidden_layers),
        ("llama", 30)
    );
    assert_eq!((facts.personas, facts.extraction_questions), (12, 9));
    assert_eq!((facts.coupling_questions, facts.eval_questions), (3, 6));
    assert_eq!((facts.em.rows, facts.em.optimizer_steps), (48, 12));
    println!("{facts}");
}
