//! Chat templates rendered with minijinja the way transformers renders them with jinja2:
//! `trim_blocks` and `lstrip_blocks` on, Python string methods (`.strip()`, `.startswith()`, ...)
//! available, `raise_exception(msg)` raising, and the variables `messages`,
//! `add_generation_prompt`, `bos_token`, `eos_token` (and `tools = none`).

use super::{ChatMessage, TokenizerError};
use minijinja::{context, Environment, Error, ErrorKind};

pub struct ChatTemplate {
    env: Environment<'static>,
    origin: String,
}

impl ChatTemplate {
    pub fn new(source: &str, origin: &str) -> Result<ChatTemplate, TokenizerError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| TokenizerError::Template {
                origin: origin.to_string(),
                message: format!("does not parse: {e}"),
            })?;
        Ok(ChatTemplate {
            env,
            origin: origin.to_string(),
        })
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos_token: Option<&str>,
        eos_token: Option<&str>,
    ) -> Result<String, TokenizerError> {
        let err = |e: Error| TokenizerError::Template {
            origin: self.origin.clone(),
            message: format!("rendering failed: {e}"),
        };
        let tmpl = self.env.get_template("chat").map_err(err)?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => bos_token.unwrap_or(""),
            eos_token => eos_token.unwrap_or(""),
            tools => (),
        })
        .map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_methods_trim_blocks_and_raise_exception_work() {
        let t = ChatTemplate::new(
            "{% for m in messages %}\n{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}\n{{ m.content.strip() }}|{% endfor %}{% if add_generation_prompt %}GO{% endif %}",
            "test",
        )
        .unwrap();
        let msgs = [
            ChatMessage::new("user", "  hi  "),
            ChatMessage::new("assistant", "yo"),
        ];
        assert_eq!(t.render(&msgs, true, None, None).unwrap(), "hi|yo|GO");
        let err = t
            .render(&[ChatMessage::new("bad", "x")], false, None, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no bad roles") && err.contains("test"), "{err}");
        let err = ChatTemplate::new("{% for %}", "broken.json")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("broken.json") && err.contains("parse"), "{err}");
    }
}
