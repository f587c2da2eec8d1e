//! Shape and dtype validation shared by every executor, so a bad request fails identically
//! (as `ErrorKind::BadInput`) whichever backend it reaches.

use shared_proto::{DType, ErrorKind, Kernel, RemoteError, Tensor};

/// Dimensions of a validated matmul: `A[m,k] · B[k,n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatMulDims {
    pub m: u32,
    pub k: u32,
    pub n: u32,
}

fn bad(msg: String) -> RemoteError {
    RemoteError::new(ErrorKind::BadInput, msg)
}

fn f32_inputs<'a>(name: &str, inputs: &'a [Tensor], want: usize) -> Result<&'a [Tensor], RemoteError> {
    if inputs.len() != want {
        return Err(bad(format!("{name} takes {want} input tensors, got {}", inputs.len())));
    }
    for (i, t) in inputs.iter().enumerate() {
        if t.dtype != DType::F32 {
            return Err(bad(format!("{name} input {i} must be f32, got {:?}", t.dtype)));
        }
    }
    Ok(inputs)
}

pub fn matmul(inputs: &[Tensor]) -> Result<MatMulDims, RemoteError> {
    let [a, b] = f32_inputs("matmul", inputs, 2)? else { unreachable!() };
    match (a.shape.as_slice(), b.shape.as_slice()) {
        (&[m, k], &[k2, n]) if k == k2 && m > 0 && k > 0 && n > 0 => Ok(MatMulDims { m, k, n }),
        (sa, sb) => Err(bad(format!("matmul needs A[m,k] and B[k,n] with non-zero dims, got {sa:?} and {sb:?}"))),
    }
}

pub fn binary(name: &str, inputs: &[Tensor]) -> Result<usize, RemoteError> {
    let [a, b] = f32_inputs(name, inputs, 2)? else { unreachable!() };
    if a.shape != b.shape {
        return Err(bad(format!("{name} needs equal shapes, got {:?} and {:?}", a.shape, b.shape)));
    }
    if a.elements() == 0 {
        return Err(bad(format!("{name} needs non-empty tensors, got shape {:?}", a.shape)));
    }
    Ok(a.elements() as usize)
}

/// Validate any kernel's inputs.
pub fn kernel(kernel: &Kernel, inputs: &[Tensor]) -> Result<(), RemoteError> {
    match kernel {
        Kernel::MatMul { repeats, .. } => {
            if *repeats == 0 || *repeats > 1000 {
                return Err(bad(format!("matmul repeats must be 1..=1000, got {repeats}")));
            }
            matmul(inputs).map(|_| ())
        }
        Kernel::Add => binary("add", inputs).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[u32]) -> Tensor {
        let n = shape.iter().product::<u32>() as usize;
        Tensor::from_f32(shape.to_vec(), &vec![0.0; n])
    }

    #[test]
    fn matmul_shapes() {
        assert_eq!(matmul(&[t(&[2, 3]), t(&[3, 4])]).unwrap(), MatMulDims { m: 2, k: 3, n: 4 });
        let e = matmul(&[t(&[2, 3]), t(&[4, 4])]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadInput);
        assert!(e.message.contains("[2, 3]"), "{}", e.message);
        assert!(matmul(&[t(&[2, 3])]).is_err());
        assert!(matmul(&[t(&[0, 3]), t(&[3, 4])]).is_err());
        assert!(matmul(&[t(&[2, 3, 1]), t(&[3, 4])]).is_err());
    }

    #[test]
    fn binary_shapes_and_dtypes() {
        assert_eq!(binary("add", &[t(&[2, 3]), t(&[2, 3])]).unwrap(), 6);
        assert!(binary("add", &[t(&[2, 3]), t(&[3, 2])]).is_err());
        let mut i = t(&[2]);
        i.dtype = DType::I32;
        assert!(binary("add", &[i, t(&[2])]).unwrap_err().message.contains("f32"));
    }
}
