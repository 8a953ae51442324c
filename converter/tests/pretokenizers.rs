//! The hand-written Llama 3 and Qwen2 pre-tokenizers against Hugging Face `tokenizers`
//! (Oniguruma running the models' regexes): the same pieces on every text of
//! `models/fixtures/pretokenizer_pieces.json` (`models/reference_pretokenizers.py`:
//! contractions in every case, numbers of several scripts, white-space runs with CR/LF,
//! several scripts, combining marks, emoji, and 400 random mixtures).

use arq::tokenizer::PreTokenizer;

const FIXTURE: &str = include_str!("../../models/fixtures/pretokenizer_pieces.json");

fn check(pre: PreTokenizer, name: &str) -> usize {
    let v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture JSON");
    let texts = v["texts"].as_array().expect("texts");
    let pieces = v["pieces"][name].as_array().expect("pieces");
    assert_eq!(texts.len(), pieces.len());
    let mut failures = Vec::new();
    for (text, theirs) in texts.iter().zip(pieces) {
        let text = text.as_str().expect("text");
        let theirs: Vec<&str> = theirs.as_array().expect("pieces").iter().map(|p| p.as_str().expect("piece")).collect();
        let ours: Vec<&str> = pre.pieces(text).collect();
        if ours != theirs {
            failures.push(format!("{text:?}:\n  ours {ours:?}\n  hf   {theirs:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{pre:?}: {} of {} texts differ:\n{}",
        failures.len(),
        texts.len(),
        failures.join("\n")
    );
    texts.len()
}

#[test]
fn llama3_pieces_match_hugging_face() {
    assert!(check(PreTokenizer::Llama3, "llama3") > 400);
    // Same pattern, merges always applied.
    check(PreTokenizer::Dbrx, "llama3");
}

#[test]
fn qwen2_pieces_match_hugging_face() {
    assert!(check(PreTokenizer::Qwen2, "qwen2") > 400);
}

#[test]
fn every_listed_gguf_name_maps() {
    for name in PreTokenizer::GGUF_NAMES {
        let pre = PreTokenizer::from_gguf_name(name).unwrap_or_else(|| panic!("{name} is listed but not mapped"));
        assert_eq!(PreTokenizer::from_u32(pre.to_u32()), Some(pre));
        assert_eq!(PreTokenizer::from_gguf_name(pre.name()), Some(pre));
    }
    assert_eq!(PreTokenizer::from_gguf_name("llama-bpe"), Some(PreTokenizer::Llama3));
    assert_eq!(PreTokenizer::from_gguf_name("smaug-bpe"), Some(PreTokenizer::Dbrx));
    assert_eq!(PreTokenizer::from_gguf_name("deepseek-r1-qwen"), Some(PreTokenizer::Qwen2));
    assert!(PreTokenizer::Llama3.ignores_merges() && !PreTokenizer::Dbrx.ignores_merges());
    assert_eq!(PreTokenizer::from_gguf_name("tekken"), None);
    assert_eq!(PreTokenizer::from_gguf_name("default"), None);
}

/// Full ids through a small byte-level BPE trained with `tokenizers` (plus `Ġqwerty`,
/// which no merge makes: Llama 3's `ignore_merges` finds it whole, the others not).
#[test]
fn small_bpe_ids_match_hugging_face_per_pre_tokenizer() {
    let v: serde_json::Value = serde_json::from_str(FIXTURE).expect("fixture JSON");
    let bpe = &v["bpe"];
    let strs = |k: &str| -> Vec<String> {
        bpe[k].as_array().expect(k).iter().map(|s| s.as_str().expect("string").to_string()).collect()
    };
    let (tokens, special, merges, texts) = (strs("tokens"), strs("special"), strs("merges"), strs("texts"));
    let types: Vec<i32> = tokens.iter().map(|t| if special.contains(t) { 3 } else { 1 }).collect();
    for (name, pre) in [("llama3", PreTokenizer::Llama3), ("dbrx", PreTokenizer::Dbrx), ("qwen2", PreTokenizer::Qwen2)]
    {
        let blob = arq::tokenizer::build_blob_with(pre, &tokens, &types, &merges).unwrap();
        let tok = arq::tokenizer::Tokenizer::from_blob(&blob).unwrap();
        let expected = bpe["ids"][name].as_array().expect("ids");
        assert_eq!(expected.len(), texts.len());
        for (text, want) in texts.iter().zip(expected) {
            let want: Vec<u32> = want.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            assert_eq!(tok.encode(text, true), want, "{name}: {text:?}");
            assert_eq!(tok.decode(&want), *text, "{name}: decode");
        }
    }
}
