//! The `#[task]` attribute of `mayfly-sdk`. Use it through `mayfly_sdk::task`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{FnArg, ItemFn, parse_macro_input, spanned::Spanned};

/// Turns a plain function into the entry point of a mayfly task.
///
/// The function takes, in this order and each optional from the end:
/// `&mut mayfly_sdk::Input`, the job's parameters as any `serde::de::DeserializeOwned`
/// type, and `&mut mayfly_sdk::Outputs`; it returns `mayfly_sdk::Result<()>`.
/// See the `mayfly-sdk` crate documentation for an example.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(proc_macro2::TokenStream::from(attr).span(), "#[task] takes no arguments")
            .to_compile_error()
            .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand(&func) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

fn expand(func: &ItemFn) -> syn::Result<proc_macro2::TokenStream> {
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(asyncness.span(), "a mayfly task cannot be async"));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(sig.generics.span(), "a mayfly task cannot be generic"));
    }
    for input in &sig.inputs {
        if let FnArg::Receiver(recv) = input {
            return Err(syn::Error::new(recv.span(), "a mayfly task is a free function"));
        }
    }
    let name = &sig.ident;
    let call = match sig.inputs.len() {
        0 => quote! { #name() },
        1 => quote! { #name(&mut __ctx.input) },
        2 => quote! { { let __params = __ctx.params()?; #name(&mut __ctx.input, __params) } },
        3 => quote! {
            { let __params = __ctx.params()?; #name(&mut __ctx.input, __params, &mut __ctx.outputs) }
        },
        _ => {
            return Err(syn::Error::new(
                sig.inputs.span(),
                "a mayfly task takes at most three arguments: \
                 (&mut Input, Params, &mut Outputs)",
            ));
        }
    };
    Ok(quote! {
        #func

        #[doc(hidden)]
        struct __MayflyTask;

        impl ::mayfly_sdk::__private::Guest for __MayflyTask {
            fn run(
                input: &::mayfly_sdk::__private::RawInput,
            ) -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> {
                ::mayfly_sdk::__private::run_task(input, |__ctx| {
                    ::mayfly_sdk::__private::IntoTaskResult::into_task_result(#call)
                })
            }
        }

        // Keeps the task reachable when the crate is built natively (for its
        // unit tests), where the export below is compiled out.
        #[doc(hidden)]
        pub const __MAYFLY_RUN: fn(
            &::mayfly_sdk::__private::RawInput,
        ) -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> =
            <__MayflyTask as ::mayfly_sdk::__private::Guest>::run;

        // Exported only in the component: linked natively (tests, benchmarks),
        // two tasks would otherwise clash on the `run` symbol.
        #[cfg(target_arch = "wasm32")]
        ::mayfly_sdk::bindings::export_task!(__MayflyTask);
    })
}
