//! The `#[task]` attribute of `mayfly-sdk`. Use it through `mayfly_sdk::task`.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{quote, quote_spanned};
use syn::{FnArg, Item, ItemFn, ItemImpl, Type, parse_macro_input, spanned::Spanned};

/// Turns a plain function, or an `impl mayfly_sdk::Task for ...` block,
/// into the entry point of a mayfly task.
///
/// A function takes, in this order and each optional from the end:
/// `&mut mayfly_sdk::Input`, the job's parameters (any
/// `serde::de::DeserializeOwned` type, by reference, or by value if it is
/// `Clone`: they are parsed once per shard), and `&mut mayfly_sdk::Outputs`;
/// it returns `mayfly_sdk::Result<()>`. It is called once per item.
///
/// An `impl mayfly_sdk::Task for T` block makes `T` the task's state for a
/// shard: `start`, then `item` per item, then `finish`.
/// See the `mayfly-sdk` crate documentation for examples.
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(proc_macro2::TokenStream::from(attr).span(), "#[task] takes no arguments")
            .to_compile_error()
            .into();
    }
    let result = match parse_macro_input!(item as Item) {
        Item::Fn(func) => expand_fn(&func),
        Item::Impl(block) => expand_impl(&block),
        other => Err(syn::Error::new(
            other.span(),
            "#[task] goes on a function or on an `impl mayfly_sdk::Task for ...` block",
        )),
    };
    match result {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// The exports every task has, calling `start`, `item` and `finish` glue.
fn exports(start: TokenStream2, item: TokenStream2, finish: TokenStream2) -> TokenStream2 {
    quote! {
        #[doc(hidden)]
        struct __MayflyTask;

        impl ::mayfly_sdk::__private::Guest for __MayflyTask {
            fn start(
                shard: ::mayfly_sdk::__private::ShardInfo,
            ) -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> {
                #start
            }
            fn item(
                input: &::mayfly_sdk::__private::RawInput,
            ) -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> {
                #item
            }
            fn finish() -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> {
                #finish
            }
        }

        // Keeps the task reachable when the crate is built natively (for its
        // unit tests), where the export below is compiled out.
        #[doc(hidden)]
        pub const __MAYFLY_ITEM: fn(
            &::mayfly_sdk::__private::RawInput,
        ) -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> =
            <__MayflyTask as ::mayfly_sdk::__private::Guest>::item;
        #[doc(hidden)]
        pub const __MAYFLY_START: fn(
            ::mayfly_sdk::__private::ShardInfo,
        ) -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> =
            <__MayflyTask as ::mayfly_sdk::__private::Guest>::start;
        #[doc(hidden)]
        pub const __MAYFLY_FINISH: fn() -> ::core::result::Result<(), ::mayfly_sdk::__private::TaskError> =
            <__MayflyTask as ::mayfly_sdk::__private::Guest>::finish;

        // Exported only in the component: linked natively (tests, benchmarks),
        // two tasks would otherwise clash on the export symbols.
        #[cfg(target_arch = "wasm32")]
        ::mayfly_sdk::bindings::export_task!(__MayflyTask);
    }
}

fn expand_impl(block: &ItemImpl) -> syn::Result<TokenStream2> {
    let Some((_, path, _)) = &block.trait_ else {
        return Err(syn::Error::new(
            block.self_ty.span(),
            "#[task] on an impl block needs `impl mayfly_sdk::Task for YourType`",
        ));
    };
    if path.segments.last().is_none_or(|s| s.ident != "Task") {
        return Err(syn::Error::new(path.span(), "#[task] on an impl block needs the `mayfly_sdk::Task` trait"));
    }
    if !block.generics.params.is_empty() {
        return Err(syn::Error::new(block.generics.span(), "a mayfly task cannot be generic"));
    }
    let ty = &block.self_ty;
    let glue = exports(
        quote! { ::mayfly_sdk::__private::start_struct::<#ty>(shard) },
        quote! { ::mayfly_sdk::__private::item_struct::<#ty>(input) },
        quote! { ::mayfly_sdk::__private::finish_struct::<#ty>() },
    );
    Ok(quote! {
        #block
        #glue
    })
}

fn expand_fn(func: &ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if let Some(asyncness) = &sig.asyncness {
        return Err(syn::Error::new(asyncness.span(), "a mayfly task cannot be async"));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(sig.generics.span(), "a mayfly task cannot be generic"));
    }
    let mut types = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(recv) => {
                return Err(syn::Error::new(recv.span(), "a mayfly task is a free function"));
            }
            FnArg::Typed(t) => types.push((*t.ty).clone()),
        }
    }
    let name = &sig.ident;
    // The parameters' type, and how the function takes them.
    let (params_ty, params_arg, check) = match types.get(1) {
        None => (quote! { ::mayfly_sdk::__private::IgnoredAny }, quote! {}, quote! {}),
        Some(Type::Reference(r)) => {
            let inner = &r.elem;
            (quote! { #inner }, quote! { __params }, quote! {})
        }
        Some(ty) => {
            let check = quote_spanned! {ty.span()=>
                // Parameters taken by value are cloned for each item (they are
                // parsed once per shard): take `&Params` to avoid the clone.
                const _: fn() = || {
                    fn params_by_value_must_be_clone<T: ::core::clone::Clone>() {}
                    params_by_value_must_be_clone::<#ty>();
                };
            };
            (quote! { #ty }, quote! { ::core::clone::Clone::clone(__params) }, check)
        }
    };
    let call = match sig.inputs.len() {
        0 => quote! { #name() },
        1 => quote! { #name(&mut __ctx.input) },
        2 => quote! { #name(&mut __ctx.input, #params_arg) },
        3 => quote! { #name(&mut __ctx.input, #params_arg, &mut __ctx.outputs) },
        _ => {
            return Err(syn::Error::new(
                sig.inputs.span(),
                "a mayfly task takes at most three arguments: \
                 (&mut Input, Params, &mut Outputs)",
            ));
        }
    };
    let glue = exports(
        quote! { let _ = shard; ::mayfly_sdk::__private::start_fn::<#params_ty>() },
        quote! {
            ::mayfly_sdk::__private::item_fn::<#params_ty>(input, |__ctx, __params| {
                let _ = __params;
                ::mayfly_sdk::__private::IntoTaskResult::into_task_result(#call)
            })
        },
        quote! { ::mayfly_sdk::__private::finish_fn() },
    );
    Ok(quote! {
        #func
        #check
        #glue
    })
}
